"""Roll a scripted expert out in its env (``MobileReachEnv``, ``MetaWorldEnv``) and hand episodes to
the dataset writer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def generate_episodes(sim: SimConfig, cameras: Sequence[str]) -> Iterator[Episode]:
    """Yield ``sim.episodes`` expert episodes; episode i is seeded from (sim.seed, i)."""
    env = MobileReachEnv(
        resolution=sim.resolution,
        cameras=tuple(cameras),
        max_steps=sim.max_steps,
        fps=sim.fps,
        arm_heavy_fraction=sim.arm_heavy_fraction,
    )
    expert = ScriptedExpert()
    noise = env.action_noise_scale(sim.action_noise) if sim.action_noise > 0 else None
    successes = 0
    try:
        for i in tqdm(range(sim.episodes), desc="sim episodes", unit="ep"):
            episode = rollout(env, expert, episode_seed(sim.seed, i), noise_scale=noise)
            successes += episode.success
            yield episode
    finally:
        env.close()
    print(f"sim: expert success {successes}/{sim.episodes} = {successes / sim.episodes:.1%}")
