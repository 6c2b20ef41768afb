"""Roll the scripted expert out in ``MobileReachEnv`` and hand episodes to the dataset writer."""

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
    state: np.ndarray  # float32 [T, 23], observation before each action
    action: np.ndarray  # float32 [T, 23]
    images: dict[str, np.ndarray]  # camera -> uint8 [T, H, W, 3]
    success: bool
    seed: int
    arm_heavy: bool


def episode_seed(base_seed: int, index: int) -> int:
    """Seed of episode ``index``: independent streams per (base seed, index), not base + index."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1)[0])


def rollout(env: MobileReachEnv, expert: ScriptedExpert, seed: int) -> Episode:
    obs = env.reset(seed)
    expert.reset(env)
    states, actions, frames = [], [], {cam: [] for cam in env.cameras}
    done = False
    while not done:
        action = expert.act(obs)
        states.append(obs["state"])
        actions.append(action)
        for cam in env.cameras:
            frames[cam].append(obs["images"][cam])
        obs, success, done = env.step(action)
    return Episode(
        task=env.prompt,
        state=np.stack(states),
        action=np.stack(actions),
        images={cam: np.stack(f) for cam, f in frames.items()},
        success=bool(success),
        seed=seed,
        arm_heavy=env.target.arm_heavy,
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
    successes = 0
    try:
        for i in tqdm(range(sim.episodes), desc="sim episodes", unit="ep"):
            episode = rollout(env, expert, episode_seed(sim.seed, i))
            successes += episode.success
            yield episode
    finally:
        env.close()
    print(f"sim: expert success {successes}/{sim.episodes} = {successes / sim.episodes:.1%}")
