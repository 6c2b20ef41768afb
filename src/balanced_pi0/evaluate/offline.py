"""Offline per-group metrics that measure arm stagnation directly.

All inputs are in physical units (unnormalised) and in the action layout:

- ``pred``  [S, B, H, D]  S flow samples of the predicted action chunk
- ``true``  [B, H, D]     ground-truth chunk
- ``hold``  [B, D]        the "hold the current pose" action: current joint positions for
                          position-controlled groups, zero for velocity-controlled ones (the base)
- ``action_is_pad`` [B, H] True where the chunk ran past the episode end

Padded steps are excluded everywhere. A stagnating policy predicts chunks that barely
leave ``hold``: its motion ratio ρ falls well below 1 and its skill towards 0.

Definitions (per group g, over valid steps):
- ``mse``/``mae``: mean squared / absolute error, also per horizon step.
- ``motion_ratio`` ρ = Σ_b ‖pred_end − hold‖ / Σ_b ‖true_end − hold‖, with ``_end`` the last
  valid step of each chunk, averaged over flow samples. Summing before dividing keeps ρ
  defined when single chunks barely move.
- ``direction_cosine``: mean cosine between (pred_end − hold) and (true_end − hold) over
  chunks where both move more than ``eps``.
- ``skill`` = 1 − MSE / MSE_hold, with MSE_hold the error of repeating ``hold`` for the chunk.
- ``gripper_event_accuracy`` (gripper groups): the chunk's end state relative to hold is
  classified open (> +thr), close (< −thr) or none; accuracy of the predicted class.
- ``sample_spread``: mean standard deviation across flow samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from balanced_pi0.errors import InputError
from balanced_pi0.groups import GroupLayout

GRIPPER_EVENT_THRESHOLD = 0.5


def _check_shapes(pred, true, hold, pad) -> None:
    if pred.ndim != 4 or true.ndim != 3 or hold.ndim != 2 or pad.ndim != 2:
        raise InputError(
            f"offline metrics: expected pred [S,B,H,D], true [B,H,D], hold [B,D], action_is_pad [B,H]; "
            f"got {pred.shape}, {true.shape}, {hold.shape}, {pad.shape}"
        )
    if (
        pred.shape[1:] != true.shape
        or hold.shape != (true.shape[0], true.shape[2])
        or pad.shape != true.shape[:2]
    ):
        raise InputError(
            f"offline metrics: shapes disagree: pred {pred.shape}, true {true.shape}, hold {hold.shape}, "
            f"action_is_pad {pad.shape}"
        )
    if pad[:, 0].any():
        raise InputError(
            "offline metrics: a chunk is padded at its first step (index 0): no real step to score"
        )


def _last_valid(pad: np.ndarray) -> np.ndarray:
    """Index of the last non-padded step of each chunk [B]."""
    h = pad.shape[1]
    return h - 1 - np.argmax(~pad[:, ::-1], axis=1)


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def group_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    hold: np.ndarray,
    action_is_pad: np.ndarray,
    dims: np.ndarray,
    *,
    gripper: bool = False,
    eps: float = 1e-6,
) -> dict[str, Any]:
    """Metrics of one group of dims (an index array into the last axis)."""
    pred = np.asarray(pred, np.float64)[..., dims]
    true = np.asarray(true, np.float64)[..., dims]
    hold = np.asarray(hold, np.float64)[..., dims]
    valid = ~np.asarray(action_is_pad, bool)  # [B,H]
    w = valid[None, :, :, None].astype(np.float64)  # [1,B,H,1]
    n_elems = valid.sum() * len(dims)

    err = pred - true[None]
    mse = float((err**2 * w).sum() / (n_elems * pred.shape[0]))
    mae = float((np.abs(err) * w).sum() / (n_elems * pred.shape[0]))
    per_step_n = valid.sum(0) * len(dims) * pred.shape[0]  # [H]
    mse_h = (err**2 * w).sum(axis=(0, 1, 3)) / np.maximum(per_step_n, 1)
    mae_h = (np.abs(err) * w).sum(axis=(0, 1, 3)) / np.maximum(per_step_n, 1)

    hold_err = hold[:, None, :] - true
    mse_hold = float((hold_err**2 * w[0]).sum() / n_elems)

    b = np.arange(true.shape[0])
    end = _last_valid(action_is_pad)
    true_move = true[b, end] - hold  # [B,G]
    pred_move = pred[:, b, end] - hold[None]  # [S,B,G]
    true_norm = np.linalg.norm(true_move, axis=-1)  # [B]
    pred_norm = np.linalg.norm(pred_move, axis=-1)  # [S,B]
    motion_ratio = _safe_div(pred_norm.sum(axis=1).mean(), true_norm.sum())
    moving = (pred_norm > eps) & (true_norm[None] > eps)
    cos = (pred_move * true_move[None]).sum(-1) / np.maximum(pred_norm * true_norm[None], eps)
    direction_cosine = float(cos[moving].mean()) if moving.any() else float("nan")

    spread = pred.std(axis=0) if pred.shape[0] > 1 else np.zeros_like(true)
    out: dict[str, Any] = {
        "mse": mse,
        "mae": mae,
        "mse_hold": mse_hold,
        "skill": 1.0 - _safe_div(mse, mse_hold) if mse_hold > 0 else float("nan"),
        "motion_ratio": motion_ratio,
        "direction_cosine": direction_cosine,
        "sample_spread": float((spread * w[0]).sum() / n_elems),
        "per_step": {"mse": mse_h.tolist(), "mae": mae_h.tolist()},
    }
    if gripper:
        out["gripper_event_accuracy"] = float((_event(pred_move) == _event(true_move)[None]).mean())
    return out


def _event(move: np.ndarray) -> np.ndarray:
    """+1 open, −1 close, 0 none, from the mean change of the gripper dims."""
    m = move.mean(-1)
    return np.where(m > GRIPPER_EVENT_THRESHOLD, 1, np.where(m < -GRIPPER_EVENT_THRESHOLD, -1, 0))


def offline_metrics(
    pred: np.ndarray, true: np.ndarray, hold: np.ndarray, action_is_pad: np.ndarray, layout: GroupLayout
) -> dict[str, Any]:
    """Per-group and overall metrics over the layout's real dims."""
    pred, true, hold, pad = (np.asarray(x) for x in (pred, true, hold, action_is_pad))
    _check_shapes(pred, true, hold, pad)
    if true.shape[-1] < layout.real_action_dim:
        raise InputError(
            f"offline metrics: actions have {true.shape[-1]} dims, layout {layout.name!r} needs "
            f"{layout.real_action_dim}"
        )
    out: dict[str, Any] = {"groups": {}}
    for g in layout.groups:
        dims = np.arange(g.start, g.stop)
        out["groups"][g.name] = group_metrics(pred, true, hold, pad, dims, gripper=g.role == "gripper")
    out["overall"] = group_metrics(pred, true, hold, pad, np.arange(layout.real_action_dim))
    out["num_chunks"] = int(true.shape[0])
    out["num_flow_samples"] = int(pred.shape[0])
    out["pad_fraction"] = float(pad.mean())
    return out
