"""SigLIP vision tower (big_vision's ViT as openpi uses it): one token per image patch.

Patches are embedded by a strided convolution, a learned position embedding is
added, a pre-norm transformer encodes them, and ``head`` projects every patch
token to the LLM width (pooling "none": pi0 keeps all patch tokens). Module
attribute names are the linen names openpi's checkpoints use
(``Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel``), with
the encoder blocks stacked on a leading axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from balanced_pi0.backends.jax.gemma import scan_layers, stacked
from balanced_pi0.model_config import SiglipConfig

_LN_EPS = 1e-6


class MlpBlock(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, dtype, rngs: nnx.Rngs):
        inits = {"kernel_init": nnx.initializers.xavier_uniform(), "bias_init": nnx.initializers.normal(1e-6)}
        self.Dense_0 = nnx.Linear(width, mlp_dim, dtype=dtype, rngs=rngs, **inits)
        self.Dense_1 = nnx.Linear(mlp_dim, width, dtype=dtype, rngs=rngs, **inits)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.Dense_1(jax.nn.gelu(self.Dense_0(x)))


class Encoder1DBlock(nnx.Module):
    """Pre-norm block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, cfg: SiglipConfig, dtype, rngs: nnx.Rngs):
        self.LayerNorm_0 = nnx.LayerNorm(cfg.width, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)
        self.MultiHeadDotProductAttention_0 = nnx.MultiHeadAttention(
            num_heads=cfg.num_heads,
            in_features=cfg.width,
            kernel_init=nnx.initializers.xavier_uniform(),
            dtype=dtype,
            decode=False,
            rngs=rngs,
        )
        self.LayerNorm_1 = nnx.LayerNorm(cfg.width, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)
        self.MlpBlock_0 = MlpBlock(cfg.width, cfg.mlp_dim, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.LayerNorm_0(x)
        x = x + self.MultiHeadDotProductAttention_0(y, y, deterministic=True)
        return x + self.MlpBlock_0(self.LayerNorm_1(x))


class Transformer(nnx.Module):
    def __init__(self, cfg: SiglipConfig, dtype, rngs: nnx.Rngs, remat: bool = False):
        self.remat = remat
        self.encoderblock = stacked(lambda r: Encoder1DBlock(cfg, dtype, r), cfg.depth, rngs)
        self.encoder_norm = nnx.LayerNorm(cfg.width, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x, _ = scan_layers(self.encoderblock, x, None, lambda block, x, _: (block(x), None), self.remat)
        return self.encoder_norm(x)


class Siglip(nnx.Module):
    """Images ``[B, R, R, 3]`` in [-1, 1] -> tokens ``[B, (R/patch)^2, out_width]``."""

    def __init__(
        self,
        cfg: SiglipConfig,
        image_resolution: int,
        out_width: int,
        dtype: str,
        rngs: nnx.Rngs,
        remat: bool = False,
    ):
        if image_resolution % cfg.patch_size:
            raise ValueError(
                f"image_resolution {image_resolution} is not a multiple of patch {cfg.patch_size}"
            )
        self.dtype = jnp.dtype(dtype)
        patch = (cfg.patch_size, cfg.patch_size)
        # Patch embedding and position embedding stay float32 (openpi does the same, for safety).
        self.embedding = nnx.Conv(3, cfg.width, patch, strides=patch, padding="VALID", rngs=rngs)
        num_patches = (image_resolution // cfg.patch_size) ** 2
        self.pos_embedding = nnx.Param(
            nnx.initializers.normal(cfg.width**-0.5)(rngs.params(), (1, num_patches, cfg.width))
        )
        self.Transformer = Transformer(cfg, self.dtype, rngs, remat)
        # Zero-initialised head: a fresh tower starts by contributing nothing to the LLM.
        self.head = nnx.Linear(
            cfg.width, out_width, kernel_init=nnx.initializers.zeros, dtype=self.dtype, rngs=rngs
        )

    def __call__(self, image: jax.Array) -> jax.Array:
        x = self.embedding(jnp.asarray(image, jnp.float32))
        x = x.reshape(x.shape[0], -1, x.shape[-1]) + self.pos_embedding[...]
        return self.head(self.Transformer(x.astype(self.dtype)))
