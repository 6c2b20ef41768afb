"""Backend-neutral model inputs: a loader batch in, numpy arrays the models read out.

Both backends train on exactly these arrays, so JAX and PyTorch see the same
normalised numbers. What happens here follows openpi's input pipeline:

- **Normalisation** is openpi's z-score ``(x − mean) / (std + 1e-6)`` with the std
  floored at ``normstats.min_std`` (near-constant dimensions such as a gripper that
  never moves would otherwise blow up, openpi issue #814). The floor is applied here
  and only here: the norm-stats files hold the data's exact std. Stats cover the real
  dimensions only; the model padding is zero. The ``per_timestep`` variant gives
  the actions a mean and std per (horizon step, dimension).
- **Padding**: state and actions are zero-padded to the model's ``action_dim`` (32).
- **Images**: uint8 ``[B, H, W, 3]`` → float32 in ``[−1, 1]`` at the model's
  resolution (resize with padding, keeping the aspect ratio, as openpi does). The
  dataset's cameras map in order onto the model's (``head`` → ``base_0_rgb``, …); a
  model camera with no dataset camera gets a black image and a False mask.
- **Prompts** are tokenised to ``max_token_len`` with a mask.

- **Delta actions** (``train.delta_actions``, openpi's ``DeltaActions``): on the
  layout's delta-mask dims every step of a chunk becomes ``a − s_t``, ``s_t`` the
  (raw) state at the chunk's first step, before normalising; ``robot_actions``
  adds ``s_t`` back after unnormalising, so rollouts get absolute targets. This
  needs the state to start with the action layout's dims (true for the embedded
  task; BEHAVIOR-1K's proprio order needs a state→action map first).

``robot_actions`` inverts all of it for evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from balanced_pi0.errors import InputError
from balanced_pi0.groups import from_delta_actions, to_delta_actions

#: openpi adds this to the std before dividing.
STD_EPS = 1e-6
_STAT_FIELDS = ("mean", "std", "q01", "q99")


@dataclass(frozen=True)
class NormStats:
    """One key's statistics; arrays are [D] (or [H, D] for per-timestep actions)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray


def load_norm_stats(path: str | Path, delta_mask: np.ndarray | None = None) -> dict[str, NormStats]:
    """Read an openpi-format file ``{"norm_stats": {"state": {...}, "actions": {...}}}``.

    ``delta_mask`` is the mask the actions will be trained with (None: absolute actions); the file
    must have been computed for the same (``bpi0 normstats`` records it as ``delta_mask``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: norm stats file not found (run `bpi0 normstats` first)")
    try:
        doc = json.loads(path.read_text())
        raw = doc["norm_stats"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not an openpi norm stats file ({type(e).__name__}: {e})") from None
    recorded = doc.get("delta_mask")
    expected = None if delta_mask is None else np.asarray(delta_mask, bool).tolist()
    if recorded != expected:
        raise InputError(
            f"{path}: statistics of {'delta actions with mask ' + str(recorded) if recorded else 'absolute actions'}"
            f", but training uses {'delta actions with mask ' + str(expected) if expected else 'absolute actions'}"
            " (train.delta_actions and train.norm_stats must agree)"
        )
    out = {}
    for key in ("state", "actions"):
        if key not in raw:
            raise InputError(f"{path}: norm_stats has no {key!r} entry")
        missing = [f for f in _STAT_FIELDS if f not in raw[key]]
        if missing:
            raise InputError(f"{path}: norm_stats.{key} lacks {missing}")
        arrays = {f: np.asarray(raw[key][f], dtype=np.float64) for f in _STAT_FIELDS}
        for f, a in arrays.items():
            if a.shape != arrays["mean"].shape:
                raise InputError(
                    f"{path}: norm_stats.{key}.{f} has shape {a.shape}, mean has {arrays['mean'].shape}"
                )
            if not np.all(np.isfinite(a)):
                raise InputError(f"{path}: norm_stats.{key}.{f} has a non-finite value")
        out[key] = NormStats(**arrays)
    return out


def std_scale(std: np.ndarray, min_std: float) -> np.ndarray:
    """What a z-score divides by: the exact ``std`` floored at ``min_std``, plus openpi's ``STD_EPS``."""
    return np.maximum(std, min_std) + STD_EPS


def normalize(x: np.ndarray, stats: NormStats, min_std: float) -> np.ndarray:
    """z-score the leading ``stats.mean.shape`` trailing dims of ``x`` (float32 out)."""
    _check_stats_shape(x, stats, "normalize")
    return ((x - stats.mean) / std_scale(stats.std, min_std)).astype(np.float32)


def unnormalize(x: np.ndarray, stats: NormStats, min_std: float) -> np.ndarray:
    """Inverse of ``normalize``; ``x`` holds the real dims only (slice the model padding first)."""
    _check_stats_shape(x, stats, "unnormalize")
    return (x * std_scale(stats.std, min_std) + stats.mean).astype(np.float32)


def _check_stats_shape(x: np.ndarray, stats: NormStats, what: str) -> None:
    shape = stats.mean.shape
    if tuple(x.shape[-len(shape) :]) != shape:
        raise InputError(f"{what}: array of shape {x.shape} does not end in the stats' shape {shape}")


def pad_to_dim(x: np.ndarray, dim: int) -> np.ndarray:
    """Zero-pad the last axis to ``dim`` (the model's 32)."""
    if x.shape[-1] > dim:
        raise InputError(f"pad_to_dim: last axis {x.shape[-1]} exceeds the model's action_dim {dim}")
    pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, pad)


def images_to_model(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [B, H, W, 3] → float32 [B, R, R, 3] in [−1, 1] (resize with padding)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"images: expected uint8 [B, H, W, 3], got {images.dtype} {images.shape}")
    if images.shape[1:3] != (resolution, resolution):
        images = np.stack([_resize_with_pad(im, resolution) for im in images])
    return images.astype(np.float32) / 127.5 - 1.0


def _resize_with_pad(image: np.ndarray, resolution: int) -> np.ndarray:
    """openpi's ``resize_with_pad``: keep the aspect ratio, centre on black."""
    h, w = image.shape[:2]
    ratio = max(h, w) / resolution
    new_h, new_w = int(h / ratio), int(w / ratio)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    out = np.zeros((resolution, resolution, 3), dtype=np.uint8)
    top, left = (resolution - new_h) // 2, (resolution - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


Tokenize = Callable[[str], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PolicyIO:
    """Everything needed to turn batches into model inputs and model actions back into robot actions.

    ``tokenize(prompt) -> (int32 [max_token_len], bool [max_token_len])``.
    """

    norm_stats: Mapping[str, NormStats]
    min_std: float
    action_dim: int
    image_resolution: int
    #: dataset camera name → model camera name
    camera_map: Mapping[str, str]
    model_cameras: tuple[str, ...]
    tokenize: Tokenize
    #: bool [real action dims]: dims trained as deltas from the chunk's first state (None: absolute)
    delta_mask: np.ndarray | None = None
    #: bool [real state dims]: dims fed as 0 (the normalised mean), ``model.state_hidden``
    state_hidden: np.ndarray | None = None

    @classmethod
    def from_params(cls, params, norm_stats_dir: str | Path = "data/norm_stats") -> PolicyIO:
        """The pipeline's choice: ``<norm_stats_dir>/<train.norm_stats>.json`` and the tokenizer of
        the model size (byte for ``tiny``; PaliGemma's SentencePiece model from ``model.tokenizer_path``
        for ``pi0`` and ``dummy``). The tokenizer is checked first: a missing model file stops
        ``bpi0 train``/``eval`` before the model is built."""
        from balanced_pi0.model_config import image_inputs
        from balanced_pi0.tokenizer import for_model

        m = params.model
        tokenizer = for_model(m)
        layout = params.layout.build()
        delta_mask = layout.delta_mask() if params.train.delta_actions else None
        state_hidden = None
        if m.state_hidden:
            state_hidden = np.zeros(layout.real_action_dim, bool)
            for name in m.state_hidden:
                state_hidden[list(layout.group(name).indices)] = True
        return cls(
            norm_stats=load_norm_stats(Path(norm_stats_dir) / f"{params.train.norm_stats}.json", delta_mask),
            min_std=params.normstats.min_std,
            action_dim=m.action_dim,
            image_resolution=m.image_resolution,
            camera_map=camera_map(params.dataset.cameras, image_inputs(params)),
            model_cameras=image_inputs(params),
            tokenize=tokenizer.tokenize,
            delta_mask=delta_mask,
            state_hidden=state_hidden,
        )

    def observation(self, batch: Mapping) -> dict:
        """Model observation arrays: images, image_masks, state, tokenized_prompt(_mask)."""
        state = normalize(batch["state"], self.norm_stats["state"], self.min_std)
        if self.state_hidden is not None:
            state = state.copy()
            state[..., : len(self.state_hidden)][..., self.state_hidden] = 0.0
        state = pad_to_dim(state, self.action_dim)
        batch_size = state.shape[0]
        images, masks = {}, {}
        by_model = {m: d for d, m in self.camera_map.items()}
        for cam in self.model_cameras:
            if cam in by_model:
                src = batch["images"].get(by_model[cam])
                if src is None:
                    raise InputError(f"batch: no image for camera {by_model[cam]!r}")
                images[cam] = images_to_model(np.asarray(src), self.image_resolution)
                masks[cam] = np.ones(batch_size, dtype=bool)
            else:
                images[cam] = np.full(
                    (batch_size, self.image_resolution, self.image_resolution, 3), -1.0, np.float32
                )
                masks[cam] = np.zeros(batch_size, dtype=bool)
        tokens, token_mask = zip(*(self.tokenize(p) for p in batch["prompt"]), strict=True)
        return {
            "images": images,
            "image_masks": masks,
            "state": state,
            "tokenized_prompt": np.stack(tokens).astype(np.int32),
            "tokenized_prompt_mask": np.stack(token_mask).astype(bool),
        }

    def actions(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """float32 [B, H, action_dim]: (delta,) normalised and padded training targets.

        ``state`` [B, Ds] is the raw state at each chunk's first step.
        """
        if self.delta_mask is not None:
            actions = to_delta_actions(actions, state, self.delta_mask)
        return pad_to_dim(normalize(actions, self.norm_stats["actions"], self.min_std), self.action_dim)

    def model_batch(self, batch: Mapping) -> dict:
        """What a backend's train step reads: observation, actions, action_is_pad."""
        return {
            "observation": self.observation(batch),
            "actions": self.actions(np.asarray(batch["actions"], dtype=np.float32), batch["state"]),
            "action_is_pad": np.asarray(batch["action_is_pad"], dtype=bool),
        }

    def robot_actions(self, model_actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Model output [B, H, action_dim] → robot actions [B, H, real dims]: unnormalised, absolute.

        ``state`` [B, Ds] is the raw state the chunk was sampled from (delta actions add it back).
        """
        stats = self.norm_stats["actions"]
        real = stats.mean.shape[-1]
        actions = unnormalize(np.asarray(model_actions)[..., :real], stats, self.min_std)
        if self.delta_mask is not None:
            actions = from_delta_actions(actions, state, self.delta_mask)
        return actions


def camera_map(dataset_cameras: Sequence[str], model_cameras: Sequence[str]) -> dict[str, str]:
    """Dataset cameras onto model cameras, in order (head → base_0_rgb, left_wrist → left_wrist_0_rgb, …)."""
    if len(dataset_cameras) > len(model_cameras):
        raise InputError(
            f"dataset.cameras: {len(dataset_cameras)} cameras {list(dataset_cameras)} but the model "
            f"has {len(model_cameras)} image inputs {list(model_cameras)}"
        )
    return dict(zip(dataset_cameras, model_cameras, strict=False))
