"""Motion per episode: joint groups by path length, the base by distance travelled, not velocity change."""

import numpy as np
import pytest

from balanced_pi0.groups import R1PRO, LayoutError, layout_from_mapping
from balanced_pi0.prep.motion import (
    base_travel,
    check_motion_layout,
    dataset_motion,
    episode_motion,
    step_changes,
)

from .conftest import columns


def test_step_changes_are_euclidean_norms_of_differences():
    a = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(step_changes(a, 0, 2), [5.0, 0.0, 5.0])


def test_base_at_constant_velocity_travels_but_does_not_change():
    a = np.zeros((20, 23))
    a[:, 0], a[:, 1], a[:, 2] = 0.3, 0.4, -0.2  # 0.5 m/s, turning at 0.2 rad/s
    m = episode_motion(7, a, R1PRO, fps=10.0)
    assert m.base_distance == pytest.approx(20 * 0.5 / 10)
    assert m.base_yaw == pytest.approx(20 * 0.2 / 10)
    assert m.path_length["base"] == 0.0  # the command never changes ...
    assert m.arm_motion == 0.0  # ... and the arms are still


def test_arm_motion_sums_both_arms_path_lengths():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 23))
    m = episode_motion(0, a, R1PRO, fps=5.0)
    expected = {}
    for name, (lo, hi) in {"left_arm": (7, 14), "right_arm": (15, 22), "torso": (3, 7)}.items():
        expected[name] = sum(np.sqrt(((a[t + 1, lo:hi] - a[t, lo:hi]) ** 2).sum()) for t in range(11))
        assert m.path_length[name] == pytest.approx(expected[name])
    assert m.arm_motion == pytest.approx(expected["left_arm"] + expected["right_arm"])
    speed = np.hypot(a[:, 0], a[:, 1])
    assert m.base_distance == pytest.approx(speed.sum() / 5.0)
    assert m.arm_base_ratio(0.0) == pytest.approx(m.arm_motion / m.base_distance)


def test_ratio_denominator_is_floored_for_a_still_base():
    a = np.zeros((5, 23))
    a[:, 7] = np.arange(5)  # left arm moves 4 rad
    m = episode_motion(0, a, R1PRO, fps=10.0)
    assert m.arm_base_ratio(0.05) == pytest.approx(4 / 0.05)


def test_dataset_motion_splits_at_episode_boundaries():
    a0, a1 = np.zeros((4, 23)), np.ones((3, 23))  # a jump between episodes is not motion
    motions = dataset_motion(columns([a0, a1]), R1PRO)
    assert [m.episode for m in motions] == [0, 1]
    assert all(m.arm_motion == 0.0 for m in motions)


def test_layout_that_does_not_fit_the_data_is_named():
    with pytest.raises(LayoutError, match=r"real_action_dim 23 but action has 14 dims"):
        check_motion_layout(R1PRO, 14)
    no_base = layout_from_mapping(
        "armonly", {"left_arm": [0, 7], "base": [7, 14]}, 14, roles={"left_arm": "arm", "base": "arm"}
    )
    with pytest.raises(
        LayoutError, match="no group of role 'base_velocity'"
    ):  # the role counts, not the name
        check_motion_layout(no_base, 14)
    flat_base = layout_from_mapping(
        "flat", {"drive": [0, 2], "arm": [2, 14]}, 14, roles={"drive": "base_velocity", "arm": "arm"}
    )
    with pytest.raises(LayoutError, match=r"group 'drive' of role 'base_velocity' must be \(vx, vy, wz\)"):
        check_motion_layout(flat_base, 14)


def test_base_travel_reads_three_dims_from_start():
    a = np.zeros((2, 5))
    a[:, 2:5] = [1.0, 0.0, 1.0]
    assert base_travel(a, 2, fps=2.0) == pytest.approx((1.0, 1.0))
