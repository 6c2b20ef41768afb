from __future__ import annotations

import sys
import time
import types

import pytest

from balanced_pi0 import config
from balanced_pi0.cli import main
from balanced_pi0.data.fetch import fetch
from balanced_pi0.data.lowdim import load_lowdim
from balanced_pi0.errors import InputError
from balanced_pi0.io import read_split

from .conftest import fake_episodes


@pytest.fixture
def fake_sim(monkeypatch):
    """Stand in for balanced_pi0.sim.recorder: deterministic small episodes."""
    module = types.ModuleType("balanced_pi0.sim.recorder")
    calls = []

    def generate_episodes(sim, cameras):
        calls.append((sim, tuple(cameras)))
        lengths = [4 + (sim.seed + i) % 5 for i in range(sim.episodes)]
        return iter(fake_episodes(lengths=lengths, dim=23, resolution=sim.resolution, seed=sim.seed))

    module.generate_episodes = generate_episodes
    monkeypatch.setitem(sys.modules, "balanced_pi0.sim.recorder", module)
    return calls


def _params(**dataset):
    sim = {"episodes": 5, "resolution": 16, **dataset.pop("sim", {})}
    return config.from_dict({"dataset": {"sim": sim, **dataset}})


def test_fetch_sim_writes_dataset_and_split(tmp_path, fake_sim):
    fetch(_params(), out=str(tmp_path / "data/dataset"), split=str(tmp_path / "data/split.json"))
    low = load_lowdim(tmp_path / "data/dataset", action_dim=23)
    split = read_split(tmp_path / "data/split.json")
    assert split["num_episodes"] == 5 and sorted(split["train"] + split["val"]) == low.episodes.tolist()
    assert len(split["val"]) == 1
    assert fake_sim[0][1] == ("head",)  # the default cameras, as params.yaml has them
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dataset", "split.json"]


def test_action_width_not_matching_layout_leaves_no_output(tmp_path, fake_sim):
    params = config.from_dict(
        {
            "layout": {
                "preset": None,
                "groups": {"base": [0, 3], "arm": [3, 20]},
                "roles": {"base": "base_velocity", "arm": "arm"},
                "real_action_dim": 20,
                "delta_mask": [-3, 17],
            },
            "dataset": {"sim": {"episodes": 3, "resolution": 16}},
        }
    )
    with pytest.raises(InputError, match=r"'action' has shape \[23\].*expects \[20\]"):
        fetch(params, out=str(tmp_path / "ds"), split=str(tmp_path / "split.json"))
    assert list(tmp_path.iterdir()) == []


def test_cli_fetch(tmp_path, fake_sim):
    params = tmp_path / "params.yaml"
    params.write_text("dataset:\n  sim: {episodes: 3, resolution: 16}\n")
    rc = main(
        ["fetch", "--params", str(params), "--out", str(tmp_path / "ds"), "--split", str(tmp_path / "s.json")]
    )
    assert rc == 0 and read_split(tmp_path / "s.json")["num_episodes"] == 3


@pytest.mark.parametrize("offline", ["1", ""])
def test_hub_without_network_fails_fast(tmp_path, monkeypatch, offline):
    from balanced_pi0.data.hub import HubUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    start = time.perf_counter()
    with pytest.raises(HubUnavailable, match=r"hub:balanced-pi0-test/does-not-exist"):
        fetch(
            _params(source="hub:balanced-pi0-test/does-not-exist"),
            out=str(tmp_path / "ds"),
            split=str(tmp_path / "s.json"),
        )
    assert time.perf_counter() - start < 30
    assert list(tmp_path.iterdir()) == []


def test_fetch_from_the_real_sim_is_byte_identical(tmp_path):
    """Two generations from the same params and seed: same bytes in every file."""
    import hashlib

    pytest.importorskip("balanced_pi0.sim.recorder")
    params = config.from_dict({"dataset": {"sim": {"episodes": 3, "resolution": 16}}})
    hashes = []
    for run in ("a", "b"):
        fetch(params, out=str(tmp_path / run / "ds"), split=str(tmp_path / run / "split.json"))
        hashes.append(
            {
                str(p.relative_to(tmp_path / run)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((tmp_path / run).rglob("*"))
                if p.is_file()
            }
        )
    assert hashes[0] == hashes[1] and any(k.startswith("ds/data/") for k in hashes[0])


def test_hub_snapshot_lands_in_the_stage_output(tmp_path, monkeypatch, raw_dataset):
    """The download path with the hub stubbed by a local copy of a v3.0 dataset."""
    import shutil

    import huggingface_hub

    def snapshot_download(repo_id, *, repo_type, revision, local_dir, etag_timeout):
        assert repo_type == "dataset" and repo_id == "someone/reach"
        shutil.copytree(raw_dataset[0], local_dir)
        (local_dir / ".cache").mkdir()
        return str(local_dir)

    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    fetch(_params(source="hub:someone/reach"), out=str(tmp_path / "ds"), split=str(tmp_path / "s.json"))
    assert not (tmp_path / "ds/.cache").exists()
    assert load_lowdim(tmp_path / "ds").num_frames == sum(len(e.action) for e in raw_dataset[1])


def test_a_failed_fetch_leaves_the_old_dataset_and_split_as_they_were(tmp_path, fake_sim):
    from test_train import tree_digest

    out, split = tmp_path / "data/dataset", tmp_path / "data/split.json"
    fetch(_params(), out=str(out), split=str(split))
    before = tree_digest(tmp_path)
    # one episode cannot be split: the error comes before the old pair is touched
    with pytest.raises(InputError, match="need at least 2 episodes"):
        fetch(_params(sim={"episodes": 1}), out=str(out), split=str(split))
    assert tree_digest(tmp_path) == before
