from __future__ import annotations

import hashlib

import numpy as np
import pytest

from balanced_pi0.data.lowdim import load_lowdim
from balanced_pi0.data.writer import write_dataset
from balanced_pi0.errors import InputError

from .conftest import CAMERAS, FakeEpisode, fake_episodes


def _hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write(root, episodes, **kw):
    return write_dataset(episodes, root, repo_id="test/sim", fps=10, cameras=CAMERAS, **kw)


def test_same_episodes_and_seed_give_identical_bytes(tmp_path):
    _write(tmp_path / "a", fake_episodes())
    _write(tmp_path / "b", fake_episodes())
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert a == b
    assert any(k.startswith("data/") for k in a) and "meta/stats.json" in a
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["data", "meta"]
    # and the hashes can tell datasets apart
    _write(tmp_path / "c", fake_episodes(seed=1))
    assert _hashes(tmp_path / "c") != a


def test_lerobot_reads_back_frames_and_images_exactly(tmp_path, monkeypatch):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    episodes = fake_episodes()
    _write(tmp_path / "ds", episodes)
    ds = LeRobotDataset("test/sim", root=tmp_path / "ds", video_backend="pyav")
    assert ds.meta.total_episodes == len(episodes)
    assert sorted(ds.meta.camera_keys) == [f"observation.images.{c}" for c in sorted(CAMERAS)]
    starts = np.cumsum([0] + [len(e.action) for e in episodes])
    for e, ep in enumerate(episodes):
        for t in (0, len(ep.action) - 1):
            item = ds[int(starts[e] + t)]
            np.testing.assert_array_equal(item["action"].numpy(), ep.action[t])
            assert item["task"] == ep.task
            for cam in CAMERAS:  # float CHW in [0, 1]; PNG is lossless
                img = (item[f"observation.images.{cam}"].numpy().transpose(1, 2, 0) * 255).round()
                np.testing.assert_array_equal(img.astype(np.uint8), ep.images[cam][t])


def test_failed_episodes_are_dropped_and_facts_kept(tmp_path):
    import json

    episodes = fake_episodes(lengths=(3, 4, 5))
    episodes[1] = FakeEpisode(**{**episodes[1].__dict__, "success": False})
    assert _write(tmp_path / "ds", episodes) == 2
    low = load_lowdim(tmp_path / "ds")
    np.testing.assert_array_equal(low.lengths, [3, 5])
    facts = json.loads((tmp_path / "ds/meta/bpi0_episodes.json").read_text())
    assert [f["source_index"] for f in facts] == [0, 2]
    assert [f["arm_heavy"] for f in facts] == [False, False]


def test_bad_episode_names_it_and_leaves_nothing(tmp_path):
    episodes = fake_episodes(lengths=(3, 4))
    episodes[1].action[2, 5] = np.nan
    with pytest.raises(InputError, match=r"episode 1: 'action' is not finite at frame 2 dim 5"):
        _write(tmp_path / "ds", episodes)
    assert list(tmp_path.iterdir()) == []


def test_generator_failure_keeps_the_previous_dataset(tmp_path):
    _write(tmp_path / "ds", fake_episodes(lengths=(3, 4)))
    before = _hashes(tmp_path / "ds")

    def broken():
        yield from fake_episodes(lengths=(5,))
        raise RuntimeError("simulator crashed")

    with pytest.raises(RuntimeError):
        _write(tmp_path / "ds", broken())
    assert _hashes(tmp_path / "ds") == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: FakeEpisode(**{**e.__dict__, "action": e.action[:0], "state": e.state[:0]}), "T>0"),
        (lambda e: FakeEpisode(**{**e.__dict__, "images": {}}), "no images for camera 'head'"),
        (lambda e: FakeEpisode(**{**e.__dict__, "action": e.action[:, :20]}), "differ from the first"),
    ],
)
def test_malformed_episodes(tmp_path, change, message):
    first, second = fake_episodes(lengths=(3, 4))
    with pytest.raises(InputError, match=message):
        _write(tmp_path / "ds", [first, change(second)])
