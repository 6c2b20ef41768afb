"""pi0's flow matching, written once for both backends (openpi's convention).

Time runs from t = 1 (noise) to t = 0 (data). Training draws, per sample, noise
``ε ~ N(0, I)`` and a time ``t ~ Beta(1.5, 1)·0.999 + 0.001`` (more weight near
the noise end), builds the noisy chunk and the target velocity::

    x_t = t·ε + (1 − t)·a,    u_t = ε − a,    error = (v(x_t, t) − u_t)²

and ``balanced_pi0.loss`` reduces the error. Sampling integrates ``dx/dt = v``
from ``x_1 = ε`` to ``x_0`` with Euler steps of ``−1/num_steps``.

What the network sees is framework-free too: the ``Observation``, the
block-causal attention mask over prefix (images, prompt) and suffix (state,
actions), and the sine-cosine embedding of ``t``. Each backend holds only its
network modules, its optimiser step and its checkpoint format.

As ``loss.py``, the functions on arrays serve NumPy, JAX (under ``jit``) and
PyTorch through ``array_api_compat``. The noise and time are drawn on the host
with NumPy from ``(seed, step)`` alone, so both backends, every device of a
data-parallel run and a resumed run all see the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from array_api_compat import array_namespace, device

if TYPE_CHECKING:
    from balanced_pi0.config import OptimizerConfig

#: Beta(1.5, 1) flow-matching time, squeezed into [0.001, 1] (openpi).
TIME_ALPHA, TIME_BETA, TIME_MIN = 1.5, 1.0, 0.001
#: Periods of the sine-cosine time embedding: sensitive across t in [0, 1] (openpi).
TIME_MIN_PERIOD, TIME_MAX_PERIOD = 4e-3, 4.0


@dataclass(frozen=True)
class Observation:
    """The model's input, as ``PolicyIO.model_batch`` makes it (arrays of either framework).

    Images are channels-last in [-1, 1] at the config's resolution; the state is padded to
    ``action_dim``. The JAX backend registers this class as a pytree."""

    images: dict[str, Any]  # camera -> f32[B, H, W, 3]
    image_masks: dict[str, Any]  # camera -> bool[B], False = camera absent
    state: Any  # f32[B, action_dim]
    tokenized_prompt: Any  # int[B, max_token_len]
    tokenized_prompt_mask: Any  # bool[B, max_token_len]


# --------------------------------------------------------------------------------------
# Training: noise, time, x_t and the target
# --------------------------------------------------------------------------------------
def sample_noise_time(
    seed: int, step: int, batch_size: int, horizon: int, action_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Noise ε ~ N(0, I) f32[B, H, D] and time t ~ Beta(1.5, 1)·0.999 + 0.001 f32[B] of step
    ``step``, from ``SeedSequence((seed, step))``: the RNG state of a run is its seed and step."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, step)))
    noise = rng.standard_normal((batch_size, horizon, action_dim), dtype=np.float32)
    t = rng.beta(TIME_ALPHA, TIME_BETA, size=batch_size) * (1.0 - TIME_MIN) + TIME_MIN
    return noise, t.astype(np.float32)


def noisy_actions(actions, noise, time):
    """``x_t = t·ε + (1 − t)·a`` and the target velocity ``u_t = ε − a`` ([B, H, D]; ``time`` [B])."""
    t = time[:, None, None]
    return t * noise + (1 - t) * actions, noise - actions


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------
def python_fori_loop(lower: int, upper: int, body: Callable, carry):
    """``jax.lax.fori_loop``'s contract as a plain loop (the eager backends')."""
    for i in range(lower, upper):
        carry = body(i, carry)
    return carry


def euler_sample(velocity: Callable, noise, num_steps: int, fori_loop: Callable = python_fori_loop):
    """Integrate ``dx/dt = velocity(x_t, t)`` from t = 1 (``noise``) to t = 0 in ``num_steps`` steps.

    ``t`` is carried as a float32 scalar (as openpi's while-loop carries it), so both backends
    evaluate the network at the same times; ``fori_loop`` is ``jax.lax.fori_loop`` under ``jit``.
    """
    dt = np.float32(-1.0 / num_steps)

    def step(_, carry):
        x_t, t = carry
        return x_t + float(dt) * velocity(x_t, t), t + dt

    x_0, _ = fori_loop(0, num_steps, step, (noise, np.float32(1.0)))
    return x_0


# --------------------------------------------------------------------------------------
# What the network sees
# --------------------------------------------------------------------------------------
def make_attn_mask(input_mask, ar_mask):
    """``[B, N, N]``: query i sees key j iff both are real and ``cumsum(ar)[j] <= cumsum(ar)[i]``.

    ``ar_mask[j] = True`` starts a block that earlier tokens cannot see: all-False is full
    attention, all-True causal (big_vision's convention). ``ar_mask`` is [N] or [B, N].
    """
    xp = array_namespace(input_mask, ar_mask)
    ar = xp.astype(xp.broadcast_to(ar_mask, input_mask.shape), xp.int32)
    cumsum = xp.cumulative_sum(ar, axis=1)
    attn = cumsum[:, None, :] <= cumsum[:, :, None]
    return attn & input_mask[:, None, :] & input_mask[:, :, None]


def posemb_sincos(pos, dim: int, min_period: float = TIME_MIN_PERIOD, max_period: float = TIME_MAX_PERIOD):
    """``f32[B, dim]`` sine-cosine embedding of scalar positions ``[B]`` (here: the flow time)."""
    xp = array_namespace(pos)
    fraction = xp.linspace(0.0, 1.0, dim // 2, dtype=xp.float32, device=device(pos))
    period = min_period * (max_period / min_period) ** fraction
    angle = xp.astype(pos, xp.float32)[:, None] * (1.0 / period * 2 * math.pi)[None, :]
    return xp.concat([xp.sin(angle), xp.cos(angle)], axis=-1)


# --------------------------------------------------------------------------------------
# Learning-rate schedule (the PyTorch step and the logs; the JAX step runs optax's equal one)
# --------------------------------------------------------------------------------------
def learning_rate(step: int, opt: OptimizerConfig) -> float:
    """openpi's ``CosineDecaySchedule``: ``optax.warmup_cosine_decay_schedule`` from
    ``peak/(warmup+1)`` up to ``peak`` over ``warmup_steps``, then cosine down to ``decay_lr``
    at ``decay_steps`` and flat after. ``step`` counts updates already applied."""
    init = opt.peak_lr / (opt.warmup_steps + 1)
    if step < opt.warmup_steps:
        return init + (opt.peak_lr - init) * step / opt.warmup_steps
    span = opt.decay_steps - opt.warmup_steps
    progress = min(step - opt.warmup_steps, span) / span
    return opt.decay_lr + (opt.peak_lr - opt.decay_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
