"""The MJCF builder: the kinematic tree the R1Pro layout assumes."""

from __future__ import annotations

import mujoco
import numpy as np

from balanced_pi0.sim import robot


def test_model_has_the_r1pro_joint_groups_and_cameras():
    model = mujoco.MjModel.from_xml_string(robot.build_mjcf())
    names = {model.joint(i).name for i in range(model.njnt)}
    assert set(robot.TORSO_JOINTS) <= names
    for side in robot.SIDES:
        assert set(robot.arm_joint_names(side)) <= names
        assert len(robot.arm_joint_names(side)) == 7
        assert model.site(f"{side}_ee").id >= 0
    assert {model.camera(i).name for i in range(model.ncam)} == {"head", "left_wrist", "right_wrist"}
    # Kinematic scene: nothing collides.
    assert not np.any(model.geom_contype) and not np.any(model.geom_conaffinity)


def test_arm_reach_matches_link_lengths():
    """Stretched straight out (all joints zero), the hand site sits one arm length ahead of the shoulder."""
    model = mujoco.MjModel.from_xml_string(robot.build_mjcf())
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    for side in robot.SIDES:
        shoulder = data.xpos[model.body(f"{side}_shoulder").id]
        ee = data.site_xpos[model.site(f"{side}_ee").id]
        np.testing.assert_allclose(
            ee - shoulder, [robot.UPPER_ARM + robot.FOREARM + robot.HAND, 0, 0], atol=1e-12
        )


def test_build_is_deterministic():
    assert robot.build_mjcf() == robot.build_mjcf()
