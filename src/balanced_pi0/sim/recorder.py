"""Roll a scripted expert out in its env (``MobileReachEnv``, ``MetaWorldEnv``) and hand episodes to
the dataset writer."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from balanced_pi0.config import SimConfig
from balanced_pi0.sim.env import MobileReachEnv
from balanced_pi0.sim.expert import ScriptedExpert


@dataclass(frozen=True)
class Episode:
    task: str
    state: np.ndarray  # float32 [T, state dim], observation before each action
    action: np.ndarray  # float32 [T, action dim]
    images: dict[str, np.ndarray]  # camera -> uint8 [T, H, W, 3]
    success: bool
    seed: int
    arm_heavy: bool | None = None  # the embedded task's placement (cube within reach of the start)


def episode_seed(base_seed: int, index: int) -> int:
    """Seed of episode ``index``: independent streams per (base seed, index), not base + index."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1)[0])


def rollout(env, expert, seed: int, noise_scale: np.ndarray | None = None, **reset_options) -> Episode:
    """One expert episode from ``env.reset(seed, **reset_options)`` until the env says done.

    ``noise_scale`` (one std per action dim): the env executes the expert's action plus Gaussian noise
    drawn from the episode's seed; the episode records the clean action (DART).
    """
    rng = np.random.default_rng([seed, 1]) if noise_scale is not None else None
    obs = env.reset(seed, **reset_options)
    expert.reset(env)
    states, actions, frames = [], [], {cam: [] for cam in env.cameras}
    done, success = False, False
    while not done:
        action = expert.act(obs)
        states.append(obs["state"])
        actions.append(action)
        for cam in env.cameras:
            frames[cam].append(obs["images"][cam])
        if rng is not None:
            action = action + (noise_scale * rng.standard_normal(action.shape)).astype(action.dtype)
        obs, success, done = env.step(action)
    return Episode(
        task=env.prompt,
        state=np.stack(states),
        action=np.stack(actions),
        images={cam: np.stack(f) for cam, f in frames.items()},
        success=bool(success),
        seed=seed,
        arm_heavy=env.arm_heavy,
    )


def generate_episodes(
    sim: SimConfig, cameras: Sequence[str], workers: int | None = None
) -> Iterator[Episode]:
    """Yield ``sim.episodes`` expert episodes in order; episode i is seeded from (sim.seed, i).

    Episodes depend only on their seed, so ``workers`` processes (default: the usable cores less the
    one that writes the dataset) roll them out while the caller writes; ``map`` hands them back in
    order, and the bytes are the same for any number of workers (a test holds 0 against 2). The
    fetch spends about as long in LeRobot's writer as in the sim, so one worker beside the writer
    roughly halves it on two cores. ``workers=0`` rolls out in this process.
    """
    if workers is None:
        workers = max(0, _usable_cores() - 1)
    workers = min(workers, sim.episodes)
    seeds = [episode_seed(sim.seed, i) for i in range(sim.episodes)]
    successes = done = 0
    if workers == 0:
        roller = _Roller(sim, tuple(cameras))  # this generator's own env: no state shared with others
        episodes = map(roller, seeds)
        close = roller.close
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: each worker opens its own renderer (EGL/OSMesa state does not survive a
        # fork). An executor, not multiprocessing.Pool: a worker that dies raises BrokenProcessPool
        # here instead of being replaced while the caller waits forever.
        pool = ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(sim, tuple(cameras)),
        )
        episodes = pool.map(_worker_rollout, seeds)

        def close() -> None:
            pool.shutdown(wait=True, cancel_futures=True)

    try:
        for episode in tqdm(episodes, total=sim.episodes, desc="sim episodes", unit="ep"):
            successes += episode.success
            done += 1
            yield episode
    except BrokenProcessPool as e:
        raise BrokenProcessPool(
            f"a sim worker process died before episode {done + 1} of {sim.episodes} "
            "(its traceback, if any, is printed above)"
        ) from e
    finally:
        close()
    print(f"sim: expert success {successes}/{sim.episodes} = {successes / sim.episodes:.1%}")


class _Roller:
    """An env, its expert and the DART noise: rolls out the episode of a seed."""

    def __init__(self, sim: SimConfig, cameras: tuple[str, ...]) -> None:
        self.env = MobileReachEnv(
            resolution=sim.resolution,
            cameras=cameras,
            max_steps=sim.max_steps,
            fps=sim.fps,
            arm_heavy_fraction=sim.arm_heavy_fraction,
        )
        self.expert = ScriptedExpert()
        self.noise = self.env.action_noise_scale(sim.action_noise) if sim.action_noise > 0 else None

    def __call__(self, seed: int) -> Episode:
        return rollout(self.env, self.expert, seed, noise_scale=self.noise)

    def close(self) -> None:
        self.env.close()


#: a pool worker's roller (one per worker process, made by the pool's initializer)
_WORKER: _Roller | None = None


def _init_worker(sim: SimConfig, cameras: tuple[str, ...]) -> None:
    global _WORKER
    _WORKER = _Roller(sim, cameras)


def _worker_rollout(seed: int) -> Episode:
    return _WORKER(seed)


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
