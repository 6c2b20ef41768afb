from __future__ import annotations

import numpy as np
import pytest

from balanced_pi0.data.loader import ChunkLoader
from balanced_pi0.data.writer import write_dataset
from balanced_pi0.errors import InputError

from .conftest import CAMERAS, fake_episodes

H = 8  # longer than two of the episodes, so chunks pad from their first frame


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader") / "ds"
    episodes = fake_episodes(lengths=(7, 12, 5, 9))
    write_dataset(episodes, root, repo_id="test/sim", fps=10, cameras=CAMERAS)
    return root, episodes


def _lerobot(root, loader, episodes=None):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(
        "test/sim",
        root=root,
        episodes=episodes,
        delta_timestamps=loader.delta_timestamps,
        video_backend="pyav",
    )


def _assert_item_equal(batch, b, item):
    np.testing.assert_array_equal(batch["state"][b], item["observation.state"].numpy())
    np.testing.assert_array_equal(batch["actions"][b], item["action"].numpy())
    np.testing.assert_array_equal(batch["action_is_pad"][b], item["action_is_pad"].numpy())
    assert batch["prompt"][b] == item["task"]
    assert batch["episode_index"][b] == int(item["episode_index"])
    assert batch["frame_index"][b] == int(item["frame_index"])
    for cam in CAMERAS:
        ref = (item[f"observation.images.{cam}"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(batch["images"][cam][b], ref)


@pytest.mark.parametrize("episodes", [None, [1, 3]])
def test_every_item_equals_lerobot_delta_timestamps(dataset, episodes, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, _ = dataset
    loader = ChunkLoader(root, action_horizon=H, batch_size=4, episodes=episodes, shuffle=False)
    ref = _lerobot(root, loader, episodes)
    assert len(ref) == loader.num_samples
    batch = loader.batch(np.arange(loader.num_samples))
    for i in range(len(ref)):
        _assert_item_equal(batch, i, ref[i])
    assert batch["action_is_pad"].any() and not batch["action_is_pad"].all()


def test_batch_format(dataset):
    root, _ = dataset
    loader = ChunkLoader(root, action_horizon=H, batch_size=5, seed=1)
    batch = next(iter(loader))
    assert set(batch) == {
        "images",
        "state",
        "actions",
        "action_is_pad",
        "prompt",
        "episode_index",
        "frame_index",
    }
    assert batch["state"].dtype == np.float32 and batch["state"].shape == (5, 23)
    assert batch["actions"].dtype == np.float32 and batch["actions"].shape == (5, H, 23)
    assert batch["action_is_pad"].dtype == bool and batch["action_is_pad"].shape == (5, H)
    assert batch["episode_index"].dtype == np.int64 and batch["frame_index"].dtype == np.int64
    assert {k: (v.dtype, v.shape) for k, v in batch["images"].items()} == {
        c: (np.uint8, (5, 16, 16, 3)) for c in CAMERAS
    }
    assert len(batch["prompt"]) == 5


def test_epochs_cover_every_sample_once_in_a_seeded_order(dataset):
    root, _ = dataset
    loader = ChunkLoader(root, action_horizon=H, batch_size=4, seed=3, drop_last=False)
    n = loader.num_samples
    seen = [
        [(int(e), int(f)) for e, f in zip(b["episode_index"], b["frame_index"], strict=True)] for b in loader
    ]
    flat = [x for b in seen for x in b]
    assert len(flat) == n == len(set(flat)) and len(seen) == -(-n // 4)
    assert loader.state_dict()["epoch"] == 1 and loader.position == 0
    again = ChunkLoader(root, action_horizon=H, batch_size=4, seed=3, drop_last=False)
    np.testing.assert_array_equal(again.epoch_order(0), loader.epoch_order(0))
    assert not np.array_equal(loader.epoch_order(0), loader.epoch_order(1))
    other_seed = ChunkLoader(root, action_horizon=H, batch_size=4, seed=4, drop_last=False)
    assert not np.array_equal(other_seed.epoch_order(0), loader.epoch_order(0))


def test_resume_mid_epoch_serves_the_same_batches(dataset):
    root, _ = dataset
    make = lambda: ChunkLoader(root, action_horizon=H, batch_size=4, seed=5)  # noqa: E731
    first = make()
    stream = first.batches()
    for _ in range(len(first) + 2):  # into the second epoch
        next(stream)
    saved = first.state_dict()
    expected = [next(stream) for _ in range(len(first))]  # crosses the next epoch boundary
    resumed = make()
    resumed.load_state_dict(saved)
    got = resumed.batches()
    for want in expected:
        have = next(got)
        np.testing.assert_array_equal(have["actions"], want["actions"])
        np.testing.assert_array_equal(have["images"]["head"], want["images"]["head"])
        np.testing.assert_array_equal(have["frame_index"], want["frame_index"])
    with pytest.raises(InputError, match="seed 5 does not match"):
        ChunkLoader(root, action_horizon=H, batch_size=4, seed=6).load_state_dict(saved)


def test_errors_name_the_problem(dataset):
    root, _ = dataset
    with pytest.raises(InputError, match=r"no camera feature\(s\) \['top'\]"):
        ChunkLoader(root, action_horizon=H, batch_size=4, cameras=["top"])
    with pytest.raises(InputError, match=r"episode\(s\) \[9\]"):
        ChunkLoader(root, action_horizon=H, batch_size=4, episodes=[0, 9])
    with pytest.raises(InputError, match="fewer than one batch"):
        ChunkLoader(root, action_horizon=H, batch_size=64, episodes=[2])


def test_video_datasets_decode_the_same_frames_as_lerobot(tmp_path, monkeypatch):
    """Hub datasets usually store cameras as video; the loader reads them through LeRobot's decoder."""
    from .conftest import write_raw

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = write_raw(
        tmp_path / "ds", fake_episodes(lengths=(6, 4), resolution=64), cameras=("head",), use_videos=True
    )  # SVT-AV1 crashes on 16x16 frames
    loader = ChunkLoader(root, action_horizon=3, batch_size=2, shuffle=False)
    ref = _lerobot(root, loader)
    batch = loader.batch(np.arange(loader.num_samples))
    for i in range(len(ref)):
        want = (ref[i]["observation.images.head"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(batch["images"]["head"][i], want)
        np.testing.assert_array_equal(batch["action_is_pad"][i], ref[i]["action_is_pad"].numpy())
