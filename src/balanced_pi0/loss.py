"""The flow-matching action loss: padding-aware and group-weighted, written once.

pi0 regresses a velocity ``v`` onto the target ``u = ε − a`` and trains on the
per-element error ``e[b,h,d] = (v − u)²`` of an action chunk (``B`` samples,
``H = action_horizon`` steps, ``D`` = 32 padded dims). This module turns ``e``
into the scalar that is differentiated. It fixes two things upstream gets wrong:

1. **Padding.** LeRobot fills a chunk that runs past the end of an episode by
   repeating the last action and flags those steps in ``action_is_pad``.
   Training on them teaches "freeze in place"; zeroing them but still dividing
   by every step ("dilution") makes the gradient scale depend on how much
   padding a batch happens to hold. Here only *valid* elements count::

       valid[b,h,d] = ¬action_is_pad[b,h] ∧ d < real_action_dim

   Dimensions past ``real_action_dim`` (23 for R1Pro) are model padding and
   never carry loss, in any mode.

2. **Balance between body parts.** On a mobile manipulator the base's large
   velocities dominate the error and the arms stagnate. A weight ``w`` per
   element re-balances the groups of ``balanced_pi0.groups``:

   ============== ============================================================
   strategy       ``w[b,h,d]``
   ============== ============================================================
   uniform        1
   per_group      the weight of d's group (groups not named weigh 1)
   per_dimension  an explicit vector of ``real_action_dim`` weights
   delta          per group g, the motion ``m = ‖a[b,h,g] − a[b,h−1,g]‖₂``
                  (0 at h = 0) gives ``clip(alpha + beta·min(m, cap), 0.1, 3)``,
                  divided by its mean over the batch's valid steps, times the
                  group's weight
   ============== ============================================================

   Whatever the strategy, ``w`` is then divided by its mean over the valid
   elements, so ``uniform`` is exactly the mean error and a weight vector only
   says *relative* emphasis. The numbers to quote are the effective weights
   after this step (``info["effective_group_weights"]``), not the raw params:
   ``arm_focused`` (arms 3, rest 1) gives the arms 1.35 and the rest 0.45.
   Weights are data, not parameters: no gradient flows through them.

The reduction (``mask_normalization``), with ``D_r = real_action_dim``:

============ ================================================ ===================
mode          loss                                              meaning
============ ================================================ ===================
token         ``Σ valid·w·e / Σ valid``                          every real step
                                                                  weighs the same
sample        ``mean_b Σ_{h,d} valid·w·e / (H_real_b · D_r)``    the seed's per-
                                                                  sample ``H/num_real``
diluted       ``Σ valid·w·e / (B·H·D_r)``                        the unfixed PR (to
                                                                  measure the bug)
none          ``Σ_{d<D_r} w·e / (B·H·D_r)``                      upstream openpi:
                                                                  padding trained on
============ ================================================ ===================

Under ``none`` every step counts as valid, so the weight means and the delta
means are taken over all steps. A sample without a real step contributes 0 and
every count is clipped at 1: an all-padded batch gives a finite loss and zero
gradients. The seed computed the delta mean over *all* steps, padded ones
included (whose motion is 0 because LeRobot repeats the last action), which
lets the amount of padding shift the weights; here only valid steps count.

One implementation serves NumPy, JAX (under ``jit``, ``grad``, ``vmap``) and
PyTorch (autograd) through ``array_api_compat``; the one thing the array API
cannot express, cutting the weights out of the autodiff graph, is three lines
in ``_stop_gradient``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, get_args

import numpy as np
from array_api_compat import array_namespace, device, is_jax_namespace, is_torch_namespace

from balanced_pi0 import config as _config
from balanced_pi0.errors import InputError
from balanced_pi0.groups import R1PRO, GroupLayout, get_layout

STRATEGIES: tuple[str, ...] = get_args(_config.Strategy)
MASK_NORMALIZATIONS: tuple[str, ...] = get_args(_config.MaskNormalization)
#: Bounds of the per-step motion factor of ``delta`` weighting (the seed's values).
DELTA_CLIP = (0.1, 3.0)


class LossSpecError(InputError):
    """A loss specification that cannot be used; the message names the field."""


@dataclass(frozen=True)
class LossSpec:
    """What ``action_loss`` computes. Hashable, so it can be a static argument of ``jax.jit``.

    ``layout`` is a preset name or a ``GroupLayout``; ``group_weights`` maps group
    names to raw weights (``per_group`` and ``delta``); ``dimension_weights`` has
    ``real_action_dim`` raw weights (``per_dimension`` only). A field that the
    strategy does not read must be left empty, so that no knob is silently ignored.
    """

    strategy: str = "uniform"
    mask_normalization: str = "token"
    layout: str | GroupLayout = "r1pro"
    group_weights: Mapping[str, float] | tuple[tuple[str, float], ...] = ()
    dimension_weights: Sequence[float] | None = None
    delta_alpha: float = 0.2
    delta_beta: float = 1.0
    delta_cap: float = 0.5

    def __post_init__(self) -> None:
        _validate(self)
        # Canonical, hashable forms (a dict field would make the spec unhashable).
        object.__setattr__(self, "layout", get_layout(self.layout))
        object.__setattr__(self, "group_weights", tuple(sorted(dict(self.group_weights).items())))
        if self.dimension_weights is not None:
            object.__setattr__(self, "dimension_weights", tuple(float(v) for v in self.dimension_weights))

    @classmethod
    def from_config(
        cls,
        cfg: _config.Params | _config.LossConfig,
        layout: str | GroupLayout | _config.LayoutConfig | None = None,
    ) -> LossSpec:
        """From the typed params (``params`` or ``params.train.loss`` plus a layout)."""
        if isinstance(cfg, _config.Params):
            if layout is not None:
                raise TypeError("from_config(params) takes the layout from params.layout")
            cfg, layout = cfg.train.loss, cfg.layout
        if isinstance(layout, _config.LayoutConfig):
            layout = layout.build()
        # LossConfig's fields are the spec's, the layout aside: copied by name, not listed again.
        values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        try:
            return cls(layout=get_layout("r1pro" if layout is None else layout), **values)
        except LossSpecError as e:
            raise LossSpecError(f"train.loss.{e}") from None

    def static_weights(self, width: int | None = None) -> np.ndarray:
        """float64 [width]: raw per-dimension weights before renormalisation (0 on padded dims)."""
        return self.layout.weight_vector(dict(self.group_weights), self.dimension_weights, width=width)

    def effective_group_weights(self) -> dict[str, float]:
        """Per-group mean weight after renormalisation to mean 1 over the valid real elements.

        The same for every batch with a valid step, whatever the strategy: a valid step
        holds all real dims, and ``delta``'s motion factor has mean 1 per group over the
        valid steps, so it leaves the group means as they are. These are the numbers to quote.
        """
        return dict(_effective_group_weights(self))


def _validate(spec: LossSpec) -> None:
    if spec.strategy not in STRATEGIES:
        raise LossSpecError(f"strategy: expected one of {list(STRATEGIES)}, got {spec.strategy!r}")
    if spec.mask_normalization not in MASK_NORMALIZATIONS:
        raise LossSpecError(
            f"mask_normalization: expected one of {list(MASK_NORMALIZATIONS)}, got {spec.mask_normalization!r}"
        )
    layout = get_layout(spec.layout)
    group_weights = dict(spec.group_weights)
    try:  # checks names, lengths and signs; messages name the field and the index
        layout.weight_vector(group_weights, spec.dimension_weights)
    except InputError as e:
        raise LossSpecError(str(e)) from None
    if group_weights and spec.strategy not in ("per_group", "delta"):
        raise LossSpecError(f"group_weights: strategy {spec.strategy!r} does not use group weights")
    if spec.dimension_weights is not None and spec.strategy != "per_dimension":
        raise LossSpecError(f"dimension_weights: strategy {spec.strategy!r} does not use dimension weights")
    if spec.strategy == "per_dimension" and spec.dimension_weights is None:
        raise LossSpecError("dimension_weights: required when strategy is 'per_dimension'")
    for name in ("delta_alpha", "delta_beta", "delta_cap"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise LossSpecError(f"{name}: expected a finite number, got {value!r}")
    if spec.delta_beta < 0 or spec.delta_cap < 0:
        raise LossSpecError("delta_beta, delta_cap: must be >= 0 (more motion must not mean less weight)")


# --------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------
def action_loss(sq_err, action_is_pad, actions, spec: LossSpec) -> tuple[Any, dict[str, Any]]:
    """Padding-aware, group-weighted mean of ``sq_err`` (see the module docstring).

    Args:
      sq_err: float [B, H, D], the per-element flow-matching error ``(v − u)²``; D ≥ real_action_dim.
      action_is_pad: bool [B, H], True on padded steps.
      actions: float [B, H, D], the normalised target actions (read by ``delta`` only; may be None otherwise).
      spec: the ``LossSpec``.

    Returns:
      ``(loss, info)``: the scalar loss, and gradient-free diagnostics ``pad_fraction``
      (share of padded steps), ``group_loss`` ({group: unweighted error of the group,
      same normalisation as the loss}, comparable across strategies) and
      ``effective_group_weights`` ({group: mean weight over the group's valid elements}; the
      same for every batch with a valid step, so a property of the spec, given as floats).
    """
    xp = array_namespace(*(x for x in (sq_err, action_is_pad, actions) if x is not None))
    _check_inputs(xp, sq_err, action_is_pad, actions, spec)
    dtype = xp.result_type(sq_err.dtype, xp.float32)  # never accumulate in bf16
    real, groups, w_fixed, group_size, num_real = _constants(
        xp, spec, sq_err.shape[-1], dtype, device(sq_err)
    )
    mode = spec.mask_normalization

    step_is_valid = xp.ones_like(action_is_pad) if mode == "none" else ~action_is_pad  # `none`: all count
    step_valid = xp.astype(step_is_valid, dtype)
    valid = step_is_valid[:, :, None] & real[None, None, :]
    # Renormalising over the batch's valid elements gives the host's numbers (mean 1 over the real
    # dims) whenever a step is valid: every valid step holds all real dims, and delta's motion factor
    # averages 1 per group over the valid steps. Without a valid step, the loss is 0 whatever w is.
    w = w_fixed  # the strategy's fixed weights, mean 1 over the real dims
    if spec.strategy == "delta":
        motion = _motion_factor(xp, spec, xp.astype(actions, dtype, copy=False), step_valid, groups)
        w = _stop_gradient(xp, w_fixed * motion)  # weights are data: the gradient stops where they are made

    # `where`, not a product: a non-finite error on a masked element must not leak in.
    e = xp.where(valid, xp.astype(sq_err, dtype, copy=False), 0.0)
    # Sums over dims go through the group matrix: short per-group sums keep float32 accurate
    # where a backend (XLA on the CPU) adds up a long reduction in sequence.
    loss = _reduce(xp, xp.sum((w * e) @ groups, axis=-1, keepdims=True), step_valid, num_real, mode)[0]
    group_loss = _reduce(xp, _stop_gradient(xp, e) @ groups, step_valid, group_size, mode)
    names = spec.layout.group_names
    info = {
        "pad_fraction": xp.mean(xp.astype(action_is_pad, dtype)),
        "group_loss": {n: group_loss[i] for i, n in enumerate(names)},
        "effective_group_weights": spec.effective_group_weights(),
    }
    return loss, info


def _reduce(xp, z, step_valid, n_dims, mode: str):
    """Reduce per-step sums ``z[b,h,k]`` (over ``n_dims[k]`` dims) to ``[k]`` as the table says."""
    if mode == "sample":
        real_steps = xp.clip(xp.sum(step_valid, axis=1), min=1.0)  # [B]; a sample without real steps gives 0
        return xp.mean(xp.sum(z, axis=1) / (real_steps[:, None] * n_dims[None, :]), axis=0)
    total = xp.sum(z, axis=(0, 1))
    if mode == "token":
        return total / xp.clip(xp.sum(step_valid) * n_dims, min=1.0)
    batch, horizon = z.shape[0], z.shape[1]
    return total / (batch * horizon * n_dims)  # diluted, none


def _motion_factor(xp, spec: LossSpec, actions, step_valid, groups):
    """[B, H, D] per-group motion factor of ``delta`` weighting, mean 1 per group over valid steps."""
    real_action_dim = spec.layout.real_action_dim
    actions = actions[:, :, :real_action_dim]  # padded dims have no group (and may hold anything)
    step = actions[:, 1:, :] - actions[:, :-1, :]
    step = xp.concat([xp.zeros_like(actions[:, :1, :]), step], axis=1)  # no motion before the chunk
    motion = xp.sqrt((step * step) @ groups[:real_action_dim, :])  # [B, H, G]
    factor = xp.clip(spec.delta_alpha + spec.delta_beta * xp.clip(motion, max=spec.delta_cap), *DELTA_CLIP)
    mean = xp.sum(step_valid[:, :, None] * factor, axis=(0, 1)) / xp.clip(xp.sum(step_valid), min=1.0)
    # The factor never falls below its lower bound, nor does its mean over valid steps; the clip
    # only keeps a batch without valid steps (mean 0) from dividing by zero.
    factor = factor / xp.clip(mean, min=DELTA_CLIP[0])[None, None, :]
    return factor @ xp.permute_dims(groups, (1, 0))


def _stop_gradient(xp, x):
    """Weights and diagnostics are data. The array API has no autodiff, hence backend code."""
    if is_jax_namespace(xp):
        import jax

        return jax.lax.stop_gradient(x)
    if is_torch_namespace(xp):
        return x.detach()
    return x


@functools.lru_cache(maxsize=64)
def _effective_group_weights(spec: LossSpec) -> tuple[tuple[str, float], ...]:
    w = spec.static_weights(spec.layout.real_action_dim)
    w = w / w.mean()
    return tuple((g.name, float(w[g.start : g.stop].mean())) for g in spec.layout.groups)


@functools.lru_cache(maxsize=64)
def _layout_arrays(spec: LossSpec, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host-side constants: real-dim mask, group matrix [width, G], weights of mean 1 over the real dims, group sizes."""
    groups = spec.layout.group_masks(width).T.astype(np.float64)
    w = spec.static_weights(width)
    w = w / w[: spec.layout.real_action_dim].mean()
    return spec.layout.real_dim_mask(width), groups, w, groups.sum(axis=0)


def _constants(xp, spec: LossSpec, width: int, dtype, dev):
    real, groups, w_fixed, group_size = _layout_arrays(spec, width)
    return (
        xp.asarray(real, device=dev),
        xp.asarray(groups, dtype=dtype, device=dev),
        xp.asarray(w_fixed, dtype=dtype, device=dev),
        xp.asarray(group_size, dtype=dtype, device=dev),
        xp.asarray([spec.layout.real_action_dim], dtype=dtype, device=dev),
    )


def _check_inputs(xp, sq_err, action_is_pad, actions, spec: LossSpec) -> None:
    shape = tuple(sq_err.shape)
    if len(shape) != 3:
        raise InputError(f"sq_err: expected shape [batch, action_horizon, action_dim], got {shape}")
    if tuple(action_is_pad.shape) != shape[:2]:
        raise InputError(
            f"action_is_pad: expected shape {shape[:2]} (sq_err's [B, H]), got {tuple(action_is_pad.shape)}"
        )
    if not xp.isdtype(action_is_pad.dtype, "bool"):
        raise InputError(f"action_is_pad: expected a bool array (True = padded), got {action_is_pad.dtype}")
    if shape[2] < spec.layout.real_action_dim:
        raise InputError(
            f"sq_err: action_dim {shape[2]} < real_action_dim {spec.layout.real_action_dim} of layout {spec.layout.name!r}"
        )
    if actions is None:
        if spec.strategy == "delta":
            raise InputError("actions: required by strategy 'delta'")
    elif tuple(actions.shape) != shape:
        raise InputError(f"actions: expected sq_err's shape {shape}, got {tuple(actions.shape)}")


# --------------------------------------------------------------------------------------
# Presets from the seed documents (LossConfig overrides, for the R1Pro layout)
# --------------------------------------------------------------------------------------
def _seed_dimension_weights() -> list[float]:
    # The seed wrote [1]*3 + [1.5]*4 + [2.5]*14 + [2.0]*2: base, torso, both arms, both grippers,
    # with the arms as one contiguous block (the proprio-state order). In the action order each
    # arm is followed by its gripper, so the blocks are laid out per group instead.
    per_role = {"base_velocity": 1.0, "torso": 1.5, "arm": 2.5, "gripper": 2.0}
    return [per_role[R1PRO.groups[i].role] for i in R1PRO.group_of_dim()]


def _arms(weight: float) -> dict[str, float]:
    return dict.fromkeys(R1PRO.names_with_role("arm"), weight)


#: Named weighting presets. Quote ``LossSpec.effective_group_weights()``, not these raw numbers.
PRESETS: dict[str, dict[str, Any]] = {
    "uniform": {"strategy": "uniform", "group_weights": {}, "dimension_weights": None},
    "arm_focused": {"strategy": "per_group", "group_weights": _arms(3.0), "dimension_weights": None},
    "very_arm_focused": {"strategy": "per_group", "group_weights": _arms(5.0), "dimension_weights": None},
    "per_dimension": {
        "strategy": "per_dimension",
        "group_weights": {},
        "dimension_weights": _seed_dimension_weights(),
    },
    # arm_focused's group weights times motion weighting, so that arm_focused vs delta isolates the motion term
    "delta": {"strategy": "delta", "group_weights": _arms(3.0), "dimension_weights": None},
}


def preset_config(name: str, base: _config.LossConfig | None = None) -> _config.LossConfig:
    """``base`` (default: the default LossConfig) with preset ``name``'s weighting fields."""
    if name not in PRESETS:
        raise LossSpecError(f"loss preset: unknown {name!r}; presets are {sorted(PRESETS)}")
    return replace(base or _config.LossConfig(), **copy.deepcopy(PRESETS[name]))
