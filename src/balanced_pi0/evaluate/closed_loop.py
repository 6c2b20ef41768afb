"""Closed-loop rollouts with action chunking, and the metrics that show stagnation in behaviour.

A policy maps an observation to an action chunk [H, D]; the harness executes the first
``n_action_steps`` of each chunk, then asks again (openpi/LeRobot action chunking). The
scripted expert runs through the same code as a policy with chunks of length one, so the
harness is checked before any model is judged by it.

Reported per policy: success rate with a Wilson 95 % interval, time to success, the
fraction of unfinished steps in which both arms are idle (the stagnation signature),
and base distance and arm path length, compared with the expert on the same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from balanced_pi0.errors import InputError
from balanced_pi0.groups import ARM_GROUPS, GroupLayout

#: An arm whose joints move less than this (rad per control step, all arm joints) is idle.
ARM_IDLE_THRESHOLD = 1e-3


class Env(Protocol):
    fps: float

    def reset(self, seed: int) -> dict[str, Any]: ...
    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool]: ...


ChunkPolicy = Callable[[dict[str, Any]], np.ndarray]


@dataclass(frozen=True)
class Rollout:
    seed: int
    success: bool
    steps: int  # control steps executed
    steps_to_success: int | None
    states: np.ndarray  # [T+1, D] states seen, first one after reset
    actions: np.ndarray  # [T, D]
    frames: np.ndarray | None  # [T+1, H, W, 3] of one camera, when recorded


def rollout(
    env: Env,
    policy: ChunkPolicy,
    seed: int,
    *,
    n_action_steps: int,
    max_steps: int,
    reset_policy: Callable[[], None] | None = None,
    record_camera: str | None = None,
) -> Rollout:
    """One episode. The policy is reset (if it has state) after the env, so it may read the new scene."""
    if n_action_steps <= 0:
        raise InputError(f"eval.n_action_steps must be > 0, got {n_action_steps}")
    obs = env.reset(seed)
    if reset_policy is not None:
        reset_policy()
    states, actions, frames = [obs["state"]], [], []
    if record_camera is not None:
        frames.append(obs["images"][record_camera])
    success, done, t = False, False, 0
    while not (success or done) and t < max_steps:
        chunk = np.asarray(policy(obs), dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            raise InputError(f"policy returned an action chunk of shape {chunk.shape}; expected [H, D]")
        for action in chunk[:n_action_steps]:
            obs, success, done = env.step(action)
            actions.append(action)
            states.append(obs["state"])
            if record_camera is not None:
                frames.append(obs["images"][record_camera])
            t += 1
            if success or done or t >= max_steps:
                break
    return Rollout(
        seed=seed,
        success=bool(success),
        steps=t,
        steps_to_success=t if success else None,
        states=np.asarray(states, np.float64),
        actions=np.asarray(actions, np.float64).reshape(t, -1),
        frames=np.asarray(frames) if record_camera is not None else None,
    )


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def motion(r: Rollout, layout: GroupLayout, fps: float) -> dict[str, float]:
    """Base distance (Σ‖v_xy‖·dt from the measured base velocity) and arm path length (rad)."""
    base = layout.group("base")
    v_xy = r.states[1:, base.start : base.start + 2]
    base_dist = float(np.linalg.norm(v_xy, axis=-1).sum() / fps)
    arm_dims = np.concatenate([np.asarray(layout.group(g).indices) for g in ARM_GROUPS])
    dq = np.diff(r.states[:, arm_dims], axis=0)
    return {"base_distance": base_dist, "arm_path": float(np.linalg.norm(dq, axis=-1).sum())}


def idle_arm_steps(r: Rollout, layout: GroupLayout) -> tuple[int, int]:
    """(steps where every arm is idle, steps before success) — the stagnation signature."""
    unfinished = r.steps_to_success if r.success else r.steps
    if unfinished == 0:
        return 0, 0
    idle = np.ones(unfinished, bool)
    for g in ARM_GROUPS:
        grp = layout.group(g)
        dq = np.diff(r.states[: unfinished + 1, grp.start : grp.stop], axis=0)
        idle &= np.abs(dq).max(axis=-1) < ARM_IDLE_THRESHOLD
    return int(idle.sum()), int(unfinished)


def summarize(rollouts: Sequence[Rollout], layout: GroupLayout, fps: float) -> dict[str, Any]:
    n = len(rollouts)
    k = sum(r.success for r in rollouts)
    lo, hi = wilson_interval(k, n)
    idle = np.array([idle_arm_steps(r, layout) for r in rollouts]).reshape(-1, 2)
    moves = [motion(r, layout, fps) for r in rollouts]
    times = [r.steps_to_success / fps for r in rollouts if r.success]
    return {
        "episodes": n,
        "successes": int(k),
        "success_rate": k / n if n else float("nan"),
        "success_ci95": [lo, hi],
        "time_to_success_s": float(np.mean(times)) if times else float("nan"),
        "arm_idle_fraction": float(idle[:, 0].sum() / idle[:, 1].sum()) if idle[:, 1].sum() else 0.0,
        "base_distance": float(np.sum([m["base_distance"] for m in moves])),
        "arm_path": float(np.sum([m["arm_path"] for m in moves])),
        "per_seed": [
            {"seed": r.seed, "success": r.success, "steps": r.steps, **m}
            for r, m in zip(rollouts, moves, strict=True)
        ],
    }


def compare_with_expert(policy: dict[str, Any], expert: dict[str, Any]) -> dict[str, float]:
    """Motion relative to the expert on the same seeds (1 = moves as much as the expert)."""

    def ratio(key: str) -> float:
        return policy[key] / expert[key] if expert[key] > 0 else float("nan")

    return {"base_distance_vs_expert": ratio("base_distance"), "arm_path_vs_expert": ratio("arm_path")}
