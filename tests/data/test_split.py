from __future__ import annotations

import json

import pytest

from balanced_pi0.data.split import make_split, write_split
from balanced_pi0.errors import InputError
from balanced_pi0.io import read_split


def test_split_is_seeded_disjoint_and_complete():
    ids = [0, 3, 5, 8, 9, 12, 20, 21, 22, 40]
    s = make_split(ids, 0.2, seed=7)
    assert s == make_split(list(reversed(ids)), 0.2, seed=7)
    assert sorted(s["train"] + s["val"]) == ids
    assert len(s["val"]) == 2 and s["train"] == sorted(s["train"]) and s["val"] == sorted(s["val"])
    assert s["num_episodes"] == 10 and s["seed"] == 7 and s["val_fraction"] == 0.2
    assert {tuple(make_split(ids, 0.2, seed=k)["val"]) for k in range(10)} != {tuple(s["val"])}


def test_both_sides_non_empty():
    assert len(make_split([1, 2], 0.01, 0)["val"]) == 1
    assert len(make_split([1, 2], 0.99, 0)["train"]) == 1
    with pytest.raises(InputError, match="at least 2 episodes"):
        make_split([4], 0.5, 0)


def test_round_trip_and_errors(tmp_path):
    s = make_split(range(6), 0.5, 1)
    write_split(tmp_path / "split.json", s)
    assert read_split(tmp_path / "split.json") == s
    with pytest.raises(InputError, match="split file not found"):
        read_split(tmp_path / "none.json")
    bad = {**s, "val": s["val"] + [s["train"][0]]}
    (tmp_path / "bad.json").write_text(json.dumps({**bad, "val": sorted(bad["val"])}))
    with pytest.raises(InputError, match=r"bad\.json"):
        read_split(tmp_path / "bad.json")
