"""Closed-loop rollouts with action chunking, and the metrics that show stagnation in behaviour.

A policy maps an observation to an action chunk [H, D]; the harness executes the first
``n_action_steps`` of each chunk, then asks again (openpi/LeRobot action chunking). Scenes
run in lockstep batches so that a model samples one batch of chunks per step of the batch.
The scripted expert runs through the same code as a policy with chunks of length one, so
the harness is checked before any model is judged by it.

Reported per policy: success rate with a Wilson 95 % interval, time to success, the
fraction of unfinished steps in which both arms are idle (the stagnation signature),
base distance and arm path length, compared with the expert on the same seeds, and why
each failed rollout failed (``outcome``: the base never arrived, the arm stayed idle, the
wrong arm moved, or the right arm reached the wrong place; for an env that reports the hand's
distance to its target, how near each rollout came, and the median of that over the wrong-place
failures, ``wrong_place_closest_m``). An env of several tasks (Meta-World's
``metaworld:<task>,...``; its ``task`` attribute names the scene's task after each reset) gets the
same summary per task too (``by_task``), so one multi-task run reports every task's success.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from balanced_pi0.errors import InputError
from balanced_pi0.groups import Group, GroupLayout

#: An arm whose joints move less than this (rad per control step, all arm joints; for Meta-World the
#: hand, m per step) is idle.
ARM_IDLE_THRESHOLD = 1e-3


class Env(Protocol):
    """``step(action, render=False)`` returns ``images: None`` and skips the cameras; ``render()`` then
    gives the images of the current state. The harness renders only the observations a policy or a
    video reads: offscreen rendering is nearly all of a step's cost (7.7 ms against 0.1 ms for the
    embedded task's physics, one 32 px camera on Mesa), and with ``n_action_steps`` > 1 most
    observations reach no one."""

    fps: float

    def reset(self, seed: int) -> dict[str, Any]: ...
    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, Any], bool, bool]: ...
    def render(self) -> dict[str, np.ndarray]: ...


ChunkPolicy = Callable[[dict[str, Any]], np.ndarray]
#: observations of every env of a batch (finished ones included) and their scene seeds → [B, H, D]
BatchPolicy = Callable[[list[dict[str, Any]], list[int]], np.ndarray]

#: Failure classes of a rollout, in the order the paper reports them.
OUTCOMES = ("success", "base_not_arrived", "arm_idle", "wrong_hand", "wrong_place")
#: After arrival, a named arm whose joints never get farther than this from their pose at arrival
#: (rad, Euclidean over the arm's joints) never tried to reach. A displacement, not a path length:
#: a policy's arm that jitters in place (replanned chunks that disagree) travels a long path and
#: reaches nothing. The smallest reach of the embedded task moves the joints ~0.27 rad.
ARM_REACH_DISPLACEMENT = 0.1


@dataclass(frozen=True)
class Rollout:
    seed: int
    success: bool
    steps: int  # control steps executed
    steps_to_success: int | None
    states: np.ndarray  # [T+1, D] states seen, first one after reset
    actions: np.ndarray  # [T, D]
    frames: np.ndarray | None  # [T+1, H, W, 3] of one camera, when recorded
    #: per-step task progress from ``env.progress()`` ([T+1] arrays), when the env reports it
    progress: dict[str, np.ndarray] | None = None
    #: the scene's task (``env.task`` after reset), for envs that have several; None otherwise
    task: str | None = None


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
    """One episode (``rollout_batch`` with one env)."""

    def one(obs: list[dict[str, Any]], seeds: list[int]) -> np.ndarray:
        chunk = np.asarray(policy(obs[0]), dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            raise InputError(f"policy returned an action chunk of shape {chunk.shape}; expected [H, D]")
        return chunk[None]

    return rollout_batch(
        [env],
        one,
        [seed],
        n_action_steps=n_action_steps,
        max_steps=max_steps,
        reset_policy=None if reset_policy is None else (lambda i: reset_policy()),
        record_camera=record_camera,
    )[0]


def rollout_batch(
    envs: Sequence[Env],
    policy: BatchPolicy,
    seeds: Sequence[int],
    *,
    n_action_steps: int,
    max_steps: int,
    reset_policy: Callable[[int], None] | None = None,
    record_camera: str | None = None,
    recorded: Collection[int] | None = None,
) -> list[Rollout]:
    """One episode per (env, seed), run in lockstep so the policy sees one batch per chunk.

    The batch always holds every env (a finished one repeats its last observation and its
    chunk is ignored), so the policy's input shape never changes: one compilation, and a
    scene's actions do not depend on when the other scenes finish. ``reset_policy(i)`` is
    called after env i's reset, so a stateful policy may read the new scene. The envs of index
    ``recorded`` (default: all) record ``record_camera`` at every step, the others only render what
    the policy reads.
    """
    if n_action_steps <= 0:
        raise InputError(f"eval.n_action_steps must be > 0, got {n_action_steps}")
    if len(envs) != len(seeds):
        raise InputError(f"rollout_batch: {len(envs)} envs for {len(seeds)} seeds")
    obs = []
    for i, (env, seed) in enumerate(zip(envs, seeds, strict=True)):
        obs.append(env.reset(seed))
        if reset_policy is not None:
            reset_policy(i)
    tracks = [
        _Track(env, o, record_camera if recorded is None or i in recorded else None)
        for i, (env, o) in enumerate(zip(envs, obs, strict=True))
    ]
    while not all(t.finished(max_steps) for t in tracks):
        chunks = np.asarray(policy(obs, list(seeds)), dtype=np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != len(envs) or chunks.shape[1] == 0:
            raise InputError(
                f"policy returned action chunks of shape {chunks.shape}; expected [{len(envs)}, H, D]"
            )
        for i, t in enumerate(tracks):
            for action in chunks[i, :n_action_steps]:
                if t.finished(max_steps):
                    break
                obs[i] = t.step(action)
            if obs[i]["images"] is None:  # the policy reads this one next (or, finished, as filler)
                obs[i] = {**obs[i], "images": t.env.render()}
    return [t.result(seed) for t, seed in zip(tracks, seeds, strict=True)]


class _Track:
    """What one env of a batch has done so far."""

    def __init__(self, env: Env, obs: dict[str, Any], record_camera: str | None) -> None:
        self.env, self.camera = env, record_camera
        self.task = getattr(env, "task", None)  # read right after reset: the scene's task
        self.success, self.done, self.t = False, False, 0
        self.states, self.actions, self.frames, self.progress = [], [], [], []
        self._record(obs)

    def _record(self, obs: dict[str, Any]) -> None:
        self.states.append(obs["state"])
        if self.camera is not None:
            self.frames.append(obs["images"][self.camera])
        if hasattr(self.env, "progress"):
            self.progress.append(self.env.progress())

    def finished(self, max_steps: int) -> bool:
        return self.success or self.done or self.t >= max_steps

    def step(self, action: np.ndarray) -> dict[str, Any]:
        """Images only when a video records every frame; else the caller renders the one it needs."""
        obs, self.success, self.done = self.env.step(action, render=self.camera is not None)
        self.actions.append(action)
        self.t += 1
        self._record(obs)
        return obs

    def result(self, seed: int) -> Rollout:
        progress = None
        if self.progress:
            progress = {k: np.asarray([p[k] for p in self.progress]) for k in self.progress[0]}
        return Rollout(
            seed=seed,
            success=bool(self.success),
            steps=self.t,
            steps_to_success=self.t if self.success else None,
            states=np.asarray(self.states, np.float64),
            actions=np.asarray(self.actions, np.float64).reshape(self.t, -1),
            frames=np.asarray(self.frames) if self.camera is not None else None,
            progress=progress,
            task=self.task,
        )


def outcome(r: Rollout, layout: GroupLayout) -> str | None:
    """Why a rollout failed (``OUTCOMES``), from the env's progress; None when it reports none.

    A single-arm task (Meta-World) reports ``hand_moved`` (the hand left its start): ``arm_idle`` if it
    never did, else ``wrong_place``. The embedded task reports ``in_reach`` (the target within reach of
    the named arm's shoulder), ``hand`` (0 left, 1 right: the named arm), with the arms' joints in ``states``:
    - ``base_not_arrived``: the target was never within reach;
    - ``arm_idle``: after arriving, the named arm's joints never got ``ARM_REACH_DISPLACEMENT`` away from
      their pose at arrival (an arm jittering in place is idle);
    - ``wrong_hand``: after arriving, the other arm got farther from its pose at arrival than the named one;
    - ``wrong_place``: the named arm moved but its hand never reached the target.
    """
    if r.success:
        return "success"
    if r.progress is None:
        return None
    if "hand_moved" in r.progress:  # an arm without a base (Meta-World): it never tried, or it missed
        return "wrong_place" if r.progress["hand_moved"].any() else "arm_idle"
    arrived = np.flatnonzero(r.progress["in_reach"])
    if len(arrived) == 0:
        return "base_not_arrived"
    arms = layout.with_role("arm")  # the sim's hand 0 / 1: the layout's first / second arm
    named, other = arms[int(r.progress["hand"][0])], arms[1 - int(r.progress["hand"][0])]

    def displacement(g: Group) -> float:
        q = r.states[arrived[0] :, g.start : g.stop]
        return float(np.linalg.norm(q - q[0], axis=-1).max())

    if displacement(named) < ARM_REACH_DISPLACEMENT:
        return "arm_idle"
    return "wrong_hand" if displacement(other) > displacement(named) else "wrong_place"


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
    """Base distance (Σ‖v_xy‖·dt from the measured base velocity; 0 without a base) and arm path
    length (the arms' joints in rad; for Meta-World the hand's position in m)."""
    base_dist = 0.0
    for base in layout.with_role("base_velocity"):
        v_xy = r.states[1:, base.start : base.start + 2]
        base_dist += float(np.linalg.norm(v_xy, axis=-1).sum() / fps)
    arm_dims = np.concatenate([np.asarray(g.indices) for g in layout.with_role("arm")])
    dq = np.diff(r.states[:, arm_dims], axis=0)
    return {"base_distance": base_dist, "arm_path": float(np.linalg.norm(dq, axis=-1).sum())}


def closest_approach(r: Rollout) -> float | None:
    """The named hand's smallest distance to its target over the rollout (m), from the env's
    ``hand_distance`` progress; None when the env reports none (Meta-World)."""
    if r.progress is None or "hand_distance" not in r.progress:
        return None
    return float(np.min(r.progress["hand_distance"]))


def median_closest(entries: Sequence[Mapping[str, Any]], outcome_name: str = "wrong_place") -> float | None:
    """Median ``closest_approach_m`` of the ``per_seed`` entries that ended as ``outcome_name``: how
    near the failures of that kind came (None when there are none, or the env reports no distance)."""
    d = [
        e["closest_approach_m"]
        for e in entries
        if e.get("outcome") == outcome_name and "closest_approach_m" in e
    ]
    return float(np.median(d)) if d else None


def idle_arm_steps(r: Rollout, layout: GroupLayout) -> tuple[int, int]:
    """(steps where every arm is idle, steps before success) — the stagnation signature."""
    unfinished = r.steps_to_success if r.success else r.steps
    if unfinished == 0:
        return 0, 0
    idle = np.ones(unfinished, bool)
    for grp in layout.with_role("arm"):
        dq = np.diff(r.states[: unfinished + 1, grp.start : grp.stop], axis=0)
        idle &= np.abs(dq).max(axis=-1) < ARM_IDLE_THRESHOLD
    return int(idle.sum()), int(unfinished)


def summarize(rollouts: Sequence[Rollout], layout: GroupLayout, fps: float) -> dict[str, Any]:
    """Success (Wilson interval), motion, idle arms and failure classes of ``rollouts``; when the env
    named a task per scene, each rollout's ``task`` in ``per_seed`` and the same summary per task in
    ``by_task`` (tasks in order of first appearance; ``per_seed`` left out there)."""
    out = _summarize(rollouts, layout, fps)
    tasks = [r.task for r in rollouts]
    if any(t is not None for t in tasks):
        for entry, t in zip(out["per_seed"], tasks, strict=True):
            entry["task"] = t
        out["by_task"] = {
            t: {
                k: v
                for k, v in _summarize([r for r in rollouts if r.task == t], layout, fps).items()
                if k != "per_seed"
            }
            for t in dict.fromkeys(tasks)
        }
    return out


def _summarize(rollouts: Sequence[Rollout], layout: GroupLayout, fps: float) -> dict[str, Any]:
    n = len(rollouts)
    k = sum(r.success for r in rollouts)
    lo, hi = wilson_interval(k, n)
    idle = np.array([idle_arm_steps(r, layout) for r in rollouts]).reshape(-1, 2)
    moves = [motion(r, layout, fps) for r in rollouts]
    times = [r.steps_to_success / fps for r in rollouts if r.success]
    outcomes = [outcome(r, layout) for r in rollouts]
    per_seed = []
    for r, m, o in zip(rollouts, moves, outcomes, strict=True):
        entry = {"seed": r.seed, "success": r.success, "steps": r.steps, "outcome": o, **m}
        closest = closest_approach(r)
        if closest is not None:
            entry["closest_approach_m"] = closest
        per_seed.append(entry)
    return {
        "episodes": n,
        "successes": int(k),
        "success_rate": k / n if n else float("nan"),
        "success_ci95": [lo, hi],
        "time_to_success_s": float(np.mean(times)) if times else float("nan"),
        "arm_idle_fraction": float(idle[:, 0].sum() / idle[:, 1].sum()) if idle[:, 1].sum() else 0.0,
        "base_distance": float(np.sum([m["base_distance"] for m in moves])),
        "arm_path": float(np.sum([m["arm_path"] for m in moves])),
        "outcomes": {o: sum(x == o for x in outcomes) for o in OUTCOMES} if None not in outcomes else None,
        "wrong_place_closest_m": median_closest(per_seed),
        "per_seed": per_seed,
    }


def compare_with_expert(policy: dict[str, Any], expert: dict[str, Any]) -> dict[str, float]:
    """Motion relative to the expert on the same seeds (1 = moves as much as the expert)."""

    def ratio(key: str) -> float:
        return policy[key] / expert[key] if expert[key] > 0 else float("nan")

    return {"base_distance_vs_expert": ratio("base_distance"), "arm_path_vs_expert": ratio("arm_path")}
