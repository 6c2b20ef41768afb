"""Small datasets for the preparation stages: in-memory LowDim-likes and real LeRobot v3.0 folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class Columns:
    """The fields of ``balanced_pi0.data.lowdim.LowDim`` the prep functions read."""

    state: np.ndarray
    action: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    episodes: np.ndarray
    ep_start: np.ndarray
    ep_stop: np.ndarray
    fps: float


def columns(actions: list[np.ndarray], states: list[np.ndarray] | None = None, fps: float = 10.0) -> Columns:
    """Concatenate per-episode arrays (episode ids 0..E-1) into LowDim-like columns."""
    states = actions if states is None else states
    lengths = np.array([len(a) for a in actions])
    stop = np.cumsum(lengths)
    return Columns(
        state=np.concatenate(states).astype(np.float32),
        action=np.concatenate(actions).astype(np.float32),
        episode_index=np.repeat(np.arange(len(actions)), lengths),
        frame_index=np.concatenate([np.arange(n) for n in lengths]),
        episodes=np.arange(len(actions)),
        ep_start=stop - lengths,
        ep_stop=stop,
        fps=fps,
    )


def write_lerobot(
    root: Path, actions: list[np.ndarray], states: list[np.ndarray] | None = None, fps: int = 10
):
    """A LeRobot v3.0 dataset (no images) written through LeRobot's own writer."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    states = actions if states is None else states
    ds_dim, da_dim = states[0].shape[1], actions[0].shape[1]
    features = {
        "observation.state": {"dtype": "float32", "shape": (ds_dim,), "names": None},
        "action": {"dtype": "float32", "shape": (da_dim,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="test/prep", root=root, fps=fps, features=features, use_videos=False)
    for s_ep, a_ep in zip(states, actions, strict=True):
        for s, a in zip(s_ep, a_ep, strict=True):
            ds.add_frame(
                {"observation.state": s.astype(np.float32), "action": a.astype(np.float32), "task": "reach"}
            )
        ds.save_episode()
    ds.finalize()
    return root


def write_split(path: Path, train: list[int], val: list[int]) -> Path:
    path.write_text(
        json.dumps(
            {
                "train": train,
                "val": val,
                "seed": 0,
                "val_fraction": 0.2,
                "num_episodes": len(train) + len(val),
            }
        )
    )
    return path


def r1pro_episode(rng: np.random.Generator, frames: int, base_speed: float, arm_step: float) -> np.ndarray:
    """float32 [frames, 23]: constant-heading base velocity of ``base_speed`` m/s, arms random-walking."""
    a = np.zeros((frames, 23))
    heading = rng.uniform(0, 2 * np.pi)
    a[:, 0], a[:, 1] = base_speed * np.cos(heading), base_speed * np.sin(heading)
    a[:, 2] = rng.normal(0, 0.1, frames)
    a[:, 3:] = np.cumsum(rng.normal(0, arm_step, (frames, 20)), axis=0)
    a[:, 14], a[:, 22] = np.sign(np.sin(np.arange(frames) / 5)), -1.0  # grippers in [-1, 1]
    return a.astype(np.float32)


@pytest.fixture(scope="session")
def r1pro_episodes():
    """Six episodes: three driving (fast base, small arm steps), three reaching (still base, big arm steps)."""
    rng = np.random.default_rng(7)
    drive = [r1pro_episode(rng, 30 + 5 * i, base_speed=0.5, arm_step=0.002) for i in range(3)]
    reach = [r1pro_episode(rng, 25 + 5 * i, base_speed=0.0, arm_step=0.05) for i in range(3)]
    return [drive[0], reach[0], drive[1], reach[1], drive[2], reach[2]]


@pytest.fixture(scope="session")
def r1pro_dataset(tmp_path_factory, r1pro_episodes):
    """(dataset root, split path, episodes): episodes 0..4 train, 5 val. Shared: do not modify."""
    tmp = tmp_path_factory.mktemp("r1pro")
    root = write_lerobot(tmp / "dataset", r1pro_episodes)
    split = write_split(tmp / "split.json", [0, 1, 2, 3, 4], [5])
    return root, split, r1pro_episodes
