"""Action-magnitude analysis: per-group values, step changes, motion; weights by the stated rule."""

import json

import numpy as np
import pytest

from balanced_pi0 import cli
from balanced_pi0.groups import R1PRO
from balanced_pi0.policy_io import STD_EPS
from balanced_pi0.prep.analyze import analyze, suggested_weights

from .conftest import columns, write_lerobot, write_split

SPANS = {"base": (0, 3), "torso": (3, 7), "left_arm": (7, 14), "left_gripper": (14, 15)}
SPANS |= {"right_arm": (15, 22), "right_gripper": (22, 23)}


def test_suggested_weights_follow_the_rule():
    rms = {
        "base": 4.0,
        "torso": 1.0,
        "left_arm": 0.5,
        "left_gripper": 0.0,
        "right_arm": 0.25,
        "right_gripper": 2.0,
    }
    w = suggested_weights(rms, R1PRO, max_weight=5.0)
    median = 1.0  # of the moving groups: 4, 1, 0.5, 0.25, 2 (the still gripper does not count)
    raw = {g: min(max(median / m, 0.2), 5.0) if m > 0 else 1.0 for g, m in rms.items()}
    per_dim = sum(raw[g] * (b - a) for g, (a, b) in SPANS.items()) / 23
    for g in rms:
        assert w[g] == pytest.approx(raw[g] / per_dim)
    assert sum(w[g] * (b - a) for g, (a, b) in SPANS.items()) == pytest.approx(23.0)


def test_group_metrics_match_an_independent_computation(r1pro_episodes):
    data = columns(r1pro_episodes)
    metrics, _ = analyze(data, R1PRO, bins=10, max_weight=5.0, min_std=0.01, min_base_motion=0.05)
    a64 = [ep.astype(np.float64) for ep in r1pro_episodes]
    std = np.maximum(np.concatenate(a64).std(axis=0), 0.01) + STD_EPS  # what policy_io divides by
    for g, (lo, hi) in SPANS.items():
        for unit, scale in (("raw", np.ones(23)), ("normalised", std)):
            m = metrics["groups"][g][unit]
            steps = np.concatenate(
                [np.linalg.norm(np.diff(ep[:, lo:hi] / scale[lo:hi], axis=0), axis=1) for ep in a64]
            )
            assert m["step_change"]["mean"] == pytest.approx(steps.mean(), rel=1e-9)
            assert m["step_change"]["count"] == sum(len(ep) - 1 for ep in a64)
            if g == "base":  # distance travelled, not change of velocity
                motion = [np.hypot(ep[:, 0] / scale[0], ep[:, 1] / scale[1]).sum() / 10.0 for ep in a64]
            else:
                motion = [
                    np.linalg.norm(np.diff(ep[:, lo:hi] / scale[lo:hi], axis=0), axis=1).sum() for ep in a64
                ]
            assert m["motion"]["median"] == pytest.approx(np.median(motion), rel=1e-9)
        raw_values = np.concatenate([ep[:, lo:hi] for ep in a64]).ravel()
        assert metrics["groups"][g]["raw"]["values"]["q99"] == pytest.approx(np.quantile(raw_values, 0.99))
    rms = metrics["suggested_group_weights"]["step_change_rms"]
    assert rms["left_arm"] == pytest.approx(
        metrics["groups"]["left_arm"]["normalised"]["step_change"]["mean"] / np.sqrt(7)
    )
    assert metrics["suggested_group_weights"]["rule"].startswith("m_g = mean")


def _run(tmp_path, root, split, name):
    out = tmp_path / name
    argv = ["analyze", "--params", str(tmp_path / "none.yaml"), "--dataset", str(root), "--split", str(split)]
    (tmp_path / "none.yaml").write_text("{}\n")
    return cli.main([*argv, "--out", str(out)]), out


def test_stage_writes_metrics_and_plots_with_deterministic_bytes(tmp_path, r1pro_dataset):
    root, split, _ = r1pro_dataset
    code, out = _run(tmp_path, root, split, "a")
    assert code == 0
    names = ["histograms.json", "histograms_normalised.png", "histograms_raw.png", "metrics.json"]
    names.append("motion_scatter.png")
    assert sorted(p.name for p in out.iterdir()) == names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["episodes"] == 5  # the training episodes only
    hist = json.loads((out / "histograms.json").read_text())["groups"]["left_arm"]["raw"]["motion"][
        "histogram"
    ]
    assert sum(hist["counts"]) == 5 and "histogram" not in metrics["groups"]["left_arm"]["raw"]["motion"]
    _, out_b = _run(tmp_path, root, split, "b")
    for name in names:
        assert (out / name).read_bytes() == (out_b / name).read_bytes(), name
    assert b"matplotlib" not in (out / "motion_scatter.png").read_bytes()  # no Software chunk


def test_stage_rejects_a_layout_that_does_not_fit(tmp_path, capsys):
    root = write_lerobot(tmp_path / "narrow", [np.zeros((4, 14), np.float32)] * 2)
    split = write_split(tmp_path / "split.json", [0, 1], [])
    code, out = _run(tmp_path, root, split, "x")
    assert code == 2
    assert "real_action_dim 23 but action has 14 dims" in capsys.readouterr().err
    assert not out.exists()


def test_activity_counts_moving_steps_and_shares_of_the_normalised_change():
    # one episode: the base drives for 6 of 10 commands, the left arm moves in 2 of 9 steps
    ep = np.zeros((10, 23))
    ep[:6, 0] = 0.5
    ep[3, 7], ep[4, 7] = 0.2, 0.4  # steps 2->3, 3->4, 4->5 change: 3 moving steps
    data = columns([ep])
    metrics, _ = analyze(data, R1PRO, bins=10, max_weight=5.0, min_std=0.01, min_base_motion=0.05)
    act = metrics["activity"]
    assert act["moving_step_share"]["base"] == pytest.approx(0.6)
    assert act["moving_step_share"]["left_arm"] == pytest.approx(3 / 9)
    assert act["moving_step_share"]["right_arm"] == 0.0
    assert act["arm_moving_step_share"] == pytest.approx(3 / 9)
    shares = act["normalised_change_share"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(g for g, v in shares.items() if v > 0) == {"base", "left_arm"}
