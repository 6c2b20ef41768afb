"""Backend-neutral pi0 architecture sizes (one definition for JAX and PyTorch).

Widths follow openpi's ``gemma.get_config`` and big_vision's SigLIP variants.
``tiny`` is this project's CPU size (embedded default, tests): Gemma-"dummy"-like
widths, a hashed word vocabulary, a small SigLIP with small images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class GemmaConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class SiglipConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


GEMMA = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    # The CPU size: two layers, dummy widths.
    "tiny": GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16),
}

SIGLIP = {
    "So400m/14": SiglipConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
    "mu/14": SiglipConfig(width=32, depth=1, mlp_dim=128, num_heads=2, patch_size=14),
    # 64x64 images in 8x8 patches -> 64 tokens per camera.
    "tiny/8": SiglipConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8),
}

#: PaliGemma's SentencePiece vocabulary.
PALIGEMMA_VOCAB = 257_152
#: Hashed word tokenizer (``tokenizer.WordTokenizer``): PAD, EOS, BOS and 8189 word buckets (the
#: embedded task's and all 50 Meta-World tasks' prompts share none: tests/test_tokenizer.py).
WORD_VOCAB = 8192

CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclass(frozen=True)
class Pi0Config:
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    siglip_variant: str = "So400m/14"
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 48
    image_resolution: int = 224
    vocab_size: int = PALIGEMMA_VOCAB
    #: the prompt tokenizer the vocabulary belongs to: ``sentencepiece`` (PaliGemma's model, read from
    #: ``model.tokenizer_path``) or ``word`` (``tokenizer.WordTokenizer``, no file)
    tokenizer: str = "sentencepiece"
    cameras: tuple[str, ...] = field(default=CAMERAS)
    #: compute dtype; params stay float32
    dtype: str = "float32"
    #: recompute each layer's activations in the backward pass (openpi always does; saves GPU
    #: memory at full size, costs compute on the CPU sizes)
    remat: bool = False

    @property
    def llm(self) -> GemmaConfig:
        return GEMMA[self.paligemma_variant]

    @property
    def expert(self) -> GemmaConfig:
        return GEMMA[self.action_expert_variant]

    @property
    def siglip(self) -> SiglipConfig:
        return SIGLIP[self.siglip_variant]

    @property
    def tokens_per_image(self) -> int:
        return (self.image_resolution // self.siglip.patch_size) ** 2


SIZES: dict[str, Pi0Config] = {
    "pi0": Pi0Config(remat=True),
    # openpi's dummy Gemma for both experts, with the small "mu/14" SigLIP: exactly the
    # configuration of the openpi oracle fixture (224x224 images, horizon 10, 16 prompt tokens).
    "dummy": Pi0Config(
        paligemma_variant="dummy",
        action_expert_variant="dummy",
        siglip_variant="mu/14",
        action_horizon=10,
        max_token_len=16,
    ),
    "tiny": Pi0Config(
        paligemma_variant="tiny",
        action_expert_variant="tiny",
        siglip_variant="tiny/8",
        action_horizon=10,
        max_token_len=16,
        image_resolution=64,
        vocab_size=WORD_VOCAB,
        tokenizer="word",
    ),
}


def get_config(size: str, **overrides) -> Pi0Config:
    try:
        cfg = SIZES[size]
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; sizes are {sorted(SIZES)}") from None
    return replace(cfg, **overrides)


def image_inputs(params) -> tuple[str, ...]:
    """The model's image inputs for a run: one per dataset camera, in order (``head`` →
    ``base_0_rgb``, ``left_wrist`` → ``left_wrist_0_rgb``, …), then ``model.empty_cameras`` blanks."""
    return CAMERAS[: len(params.dataset.cameras) + params.model.empty_cameras]


def from_params(params) -> Pi0Config:
    """The architecture a run's params ask for (both backends build from this)."""
    model = params.model
    return get_config(
        model.size,
        action_horizon=model.action_horizon,
        action_dim=model.action_dim,
        max_token_len=model.max_token_len,
        image_resolution=model.image_resolution,
        dtype=model.dtype,
        cameras=image_inputs(params),
    )
