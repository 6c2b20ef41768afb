"""Offline metrics on constructed cases whose values are known by hand."""

import numpy as np
import pytest

from balanced_pi0.errors import InputError
from balanced_pi0.evaluate.offline import group_metrics, offline_metrics
from balanced_pi0.groups import R1PRO, layout_from_mapping


def _case(seed=0, b=4, h=5, d=23, s=3):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(b, h, d))
    hold = rng.normal(size=(b, d))
    pad = np.zeros((b, h), bool)
    pad[1, 3:] = True
    pad[2, 1:] = True
    return s, true, hold, pad


def test_copy_current_pose_has_zero_motion_and_zero_skill():
    s, true, hold, pad = _case()
    pred = np.broadcast_to(hold[None, :, None, :], (s, *true.shape))
    m = offline_metrics(pred, true, hold, pad, R1PRO)
    for g in (*R1PRO.group_names, "overall"):
        gm = m["overall"] if g == "overall" else m["groups"][g]
        assert gm["motion_ratio"] == 0.0
        assert gm["skill"] == pytest.approx(0.0, abs=1e-12)
        assert gm["sample_spread"] == pytest.approx(0.0, abs=1e-12)


def test_ground_truth_policy_has_unit_motion_and_unit_skill():
    s, true, hold, pad = _case()
    pred = np.broadcast_to(true[None], (s, *true.shape))
    m = offline_metrics(pred, true, hold, pad, R1PRO)
    for gm in [*m["groups"].values(), m["overall"]]:
        assert gm["motion_ratio"] == pytest.approx(1.0)
        assert gm["skill"] == pytest.approx(1.0)
        assert gm["mse"] == 0.0 and gm["mae"] == 0.0
        assert gm["direction_cosine"] == pytest.approx(1.0)
    assert m["groups"]["left_gripper"]["gripper_event_accuracy"] == 1.0


def test_reversed_motion_has_cosine_minus_one():
    _, true, hold, pad = _case()
    reversed_ = 2 * hold[:, None, :] - true
    m = offline_metrics(reversed_[None], true, hold, pad, R1PRO)
    assert m["overall"]["direction_cosine"] == pytest.approx(-1.0)
    assert m["overall"]["motion_ratio"] == pytest.approx(1.0)


def test_padded_steps_never_count():
    s, true, hold, pad = _case()
    rng = np.random.default_rng(1)
    pred = true[None] + 0.1 * rng.normal(size=(s, *true.shape))
    base = offline_metrics(pred, true, hold, pad, R1PRO)
    garbage = pred.copy()
    garbage[:, pad] = 1e6
    true_garbage = true.copy()
    true_garbage[pad] = -1e6
    m = offline_metrics(garbage, true_garbage, hold, pad, R1PRO)
    assert m == base


def test_hand_computed_values():
    # One chunk, two steps, one dim, two flow samples.
    true = np.array([[[1.0], [3.0]]])  # [B=1,H=2,D=1]
    hold = np.array([[0.0]])
    pad = np.zeros((1, 2), bool)
    pred = np.array([[[[2.0], [1.0]]], [[[0.0], [3.0]]]])  # [S=2,1,2,1]
    m = group_metrics(pred, true, hold, pad, np.array([0]))
    # errors: sample0 (1, -2), sample1 (-1, 0) -> mse (1+4+1+0)/4, mae (1+2+1+0)/4
    assert m["mse"] == pytest.approx(1.5)
    assert m["mae"] == pytest.approx(1.0)
    assert m["per_step"]["mse"] == pytest.approx([1.0, 2.0])
    # hold error: (1, 9)/2
    assert m["mse_hold"] == pytest.approx(5.0)
    assert m["skill"] == pytest.approx(1 - 1.5 / 5.0)
    # chunk ends: pred 1 and 3, true 3 -> rho = mean(1, 3) / 3
    assert m["motion_ratio"] == pytest.approx(2.0 / 3.0)
    # spread: std over samples of (2,0) and (1,3) -> (1, 1)
    assert m["sample_spread"] == pytest.approx(1.0)


def test_gripper_events():
    layout = layout_from_mapping("g", {"hand": [0, 1]}, 1, roles={"hand": "gripper"})  # role, not name
    true = np.array([[[1.0]], [[-1.0]], [[0.1]]])  # open, close, none relative to hold 0
    hold = np.zeros((3, 1))
    pad = np.zeros((3, 1), bool)
    pred = np.array([[[[1.0]], [[1.0]], [[0.0]]]])  # right, wrong, right
    m = offline_metrics(pred, true, hold, pad, layout)
    assert m["groups"]["hand"]["gripper_event_accuracy"] == pytest.approx(2 / 3)


def test_bad_shapes_and_padded_first_step():
    s, true, hold, pad = _case()
    pred = np.broadcast_to(true[None], (s, *true.shape))
    with pytest.raises(InputError, match="shapes disagree"):
        offline_metrics(pred, true[:, :-1], hold, pad, R1PRO)
    pad2 = pad.copy()
    pad2[0, 0] = True
    with pytest.raises(InputError, match="padded at its first step"):
        offline_metrics(pred, true, hold, pad2, R1PRO)
    with pytest.raises(InputError, match="layout 'r1pro' needs 23"):
        offline_metrics(pred[..., :20], true[..., :20], hold[..., :20], pad, R1PRO)
