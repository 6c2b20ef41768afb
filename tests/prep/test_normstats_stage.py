"""``bpi0 normstats`` end to end on a LeRobot dataset: train episodes only, openpi format, same bytes."""

import json

import numpy as np

from balanced_pi0 import cli

from .conftest import write_lerobot, write_split


def _run(tmp_path, root, split, name, params="{}\n"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(params)
    out = tmp_path / name
    argv = ["normstats", "--params", str(p), "--dataset", str(root), "--split", str(split), "--out", str(out)]
    return cli.main(argv), out


def test_stage_writes_one_openpi_file_per_variant_from_train_episodes(tmp_path, r1pro_dataset):
    root, split, episodes = r1pro_dataset
    code, out = _run(tmp_path, root, split, "a")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "balanced.json",
        "delta_per_timestep.json",
        "per_timestep.json",
        "standard.json",
    ]
    train = np.concatenate(episodes[:5]).astype(np.float64)  # episode 5 is validation
    std = json.loads((out / "standard.json").read_text())["norm_stats"]
    for key in ("state", "actions"):  # the fixture's state equals its action
        np.testing.assert_allclose(std[key]["mean"], train.mean(axis=0), rtol=1e-9, atol=1e-12)
        # exact, near-constant dims included: the std floor belongs to normalisation (policy_io)
        np.testing.assert_allclose(std[key]["std"], train.std(axis=0), rtol=1e-9, atol=1e-12)
        tol = (train.max(axis=0) - train.min(axis=0)) / 1e4
        q99 = np.quantile(train, 0.99, axis=0)
        assert np.all(np.abs(np.array(std[key]["q99"]) - q99) <= tol + 1e-12)
    per_t = json.loads((out / "per_timestep.json").read_text())
    assert np.shape(per_t["norm_stats"]["actions"]["q01"]) == (10, 23)  # model.action_horizon
    _, out_b = _run(tmp_path, root, split, "b")
    for p in out.iterdir():
        assert p.read_bytes() == (out_b / p.name).read_bytes(), p.name


def test_non_finite_value_is_named_by_episode_frame_and_dimension(tmp_path, capsys):
    eps = [np.zeros((4, 23), np.float32) for _ in range(2)]
    eps[1][2, 9] = np.nan
    root = write_lerobot(tmp_path / "nan", eps)
    split = write_split(tmp_path / "split.json", [0, 1], [])
    code, out = _run(tmp_path, root, split, "x")
    assert code == 2
    err = capsys.readouterr().err
    assert "episode 1 frame 2 dim 9" in err
    assert not out.exists()
