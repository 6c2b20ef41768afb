"""Small synthetic episodes and LeRobot v3.0 datasets for the data tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

CAMERAS = ("head", "left_wrist", "right_wrist")


@dataclass(frozen=True)
class FakeEpisode:
    """Shaped like ``balanced_pi0.sim.recorder.Episode``."""

    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    success: bool = True
    seed: int = 0
    arm_heavy: bool = False


def fake_episodes(
    lengths=(7, 12, 5), dim: int = 23, resolution: int = 16, cameras=CAMERAS, seed: int = 0
) -> list[FakeEpisode]:
    """Episodes whose values encode (episode, frame, dim) so any misplaced row shows."""
    rng = np.random.default_rng(seed)
    out = []
    for e, n in enumerate(lengths):
        frame = np.arange(n, dtype=np.float32)[:, None]
        dims = np.arange(dim, dtype=np.float32)[None, :]
        action = 1000.0 * e + frame + dims / 100.0
        images = {c: rng.integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8) for c in cameras}
        out.append(
            FakeEpisode(
                task=f"reach the cube with the {'left' if e % 2 else 'right'} hand",
                state=(-action).astype(np.float32),
                action=action.astype(np.float32),
                images=images,
                seed=e,
                arm_heavy=bool(e % 2),
            )
        )
    return out


def write_raw(root: Path, episodes, fps: int = 10, cameras=(), use_videos: bool = False) -> Path:
    """Write episodes with LeRobot's writer directly (no project code involved)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dim_s, dim_a = episodes[0].state.shape[1], episodes[0].action.shape[1]
    features = {
        "observation.state": {"dtype": "float32", "shape": (dim_s,), "names": None},
        "action": {"dtype": "float32", "shape": (dim_a,), "names": None},
    }
    for cam in cameras:
        h, w = episodes[0].images[cam].shape[1:3]
        features[f"observation.images.{cam}"] = {
            "dtype": "video" if use_videos else "image",
            "shape": (h, w, 3),
            "names": ["height", "width", "channels"],
        }
    ds = LeRobotDataset.create(
        "test/raw", fps=fps, features=features, root=root, use_videos=use_videos, video_backend="pyav"
    )
    for ep in episodes:
        for t in range(len(ep.action)):
            frame = {"observation.state": ep.state[t], "action": ep.action[t], "task": ep.task}
            for cam in cameras:
                frame[f"observation.images.{cam}"] = ep.images[cam][t]
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return root


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory) -> tuple[Path, list[FakeEpisode]]:
    """A three-episode low-dimensional dataset written by LeRobot itself."""
    episodes = fake_episodes()
    root = tmp_path_factory.mktemp("raw") / "ds"
    return write_raw(root, episodes), episodes
