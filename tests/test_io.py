"""The IO module: atomic writes whose bytes depend only on content, strict readers naming the file."""

from __future__ import annotations

import pytest

from balanced_pi0 import io
from balanced_pi0.errors import InputError


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    io.write_json(path, {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        io.write_json(path, {"x": float("nan")})  # JSON has no NaN: refused, not written
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_json_can_keep_key_order(tmp_path):
    io.write_json(tmp_path / "s.json", {"train": [1], "val": [0]}, sort_keys=False)
    assert (tmp_path / "s.json").read_text().index("train") < (tmp_path / "s.json").read_text().index("val")


def test_readers_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(InputError, match=r"none\.json: expert rollouts not found"):
        io.read_json(tmp_path / "none.json", missing="expert rollouts not found")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        io.read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InputError, match=r"list\.json: expected a JSON object of results, got list"):
        io.read_json_object(tmp_path / "list.json", "of results")


def test_params_npz_bytes_depend_only_on_content(tmp_path):
    import numpy as np

    params = {"b": np.ones(3, np.float32), "a/w": np.zeros((2, 2), np.float32)}
    io.save_params_npz(tmp_path / "1.npz", params)
    io.save_params_npz(tmp_path / "2.npz", dict(reversed(params.items())))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    back = io.load_params_npz(tmp_path / "1.npz")
    assert sorted(back) == ["a/w", "b"] and np.array_equal(back["b"], params["b"])
