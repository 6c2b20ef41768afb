"""MobileReachEnv: observation contract, kinematics, determinism, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from balanced_pi0.errors import InputError
from balanced_pi0.groups import R1PRO
from balanced_pi0.sim import env as sim_env
from balanced_pi0.sim.env import MobileReachEnv


@pytest.fixture(scope="module")
def env():
    e = MobileReachEnv(resolution=16)
    yield e
    e.close()


def hold(obs) -> np.ndarray:
    """An action that keeps every joint where it is and the base still."""
    a = obs["state"][: sim_env.ACTION_DIM].copy()
    a[0:3] = 0.0
    return a


def test_layout_matches_r1pro():
    for name, expected in (("base", sim_env.BASE), ("torso", sim_env.TORSO), ("left_arm", sim_env.LEFT_ARM)):
        g = R1PRO.group(name)
        assert (g.start, g.stop) == (expected.start, expected.stop)
    assert R1PRO.group("right_gripper").start == sim_env.RIGHT_GRIPPER
    assert R1PRO.real_action_dim == sim_env.ACTION_DIM


def test_observation_contract(env):
    obs = env.reset(3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (sim_env.STATE_DIM,)
    assert set(obs["images"]) == {"head", "left_wrist", "right_wrist"}
    for img in obs["images"].values():
        assert img.dtype == np.uint8 and img.shape == (16, 16, 3)
    assert not np.array_equal(obs["images"]["head"], obs["images"]["left_wrist"])
    assert re.fullmatch(r"reach the (red|green|blue|yellow) cube with the (left|right) hand", obs["prompt"])
    assert env.fps == 10


def test_same_seed_same_arrays(env):
    def run(seed):
        obs = env.reset(seed)
        out = [obs]
        rng = np.random.default_rng(0)
        for _ in range(5):
            a = hold(obs) + rng.normal(0, 0.3, 23).astype(np.float32)
            obs, _, _ = env.step(a)
            out.append(obs)
        return out

    first, second, other = run(11), run(11), run(12)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["state"], b["state"])
        for cam in a["images"]:
            np.testing.assert_array_equal(a["images"][cam], b["images"][cam])
        assert a["prompt"] == b["prompt"]
    assert not np.array_equal(first[0]["images"]["head"], other[0]["images"]["head"])


def test_base_velocity_integrates_in_robot_frame():
    env = MobileReachEnv(cameras=(), fps=10)
    obs = env.reset(0)
    x0, y0, _ = env.base_pose()
    a = hold(obs)
    a[2] = np.pi / 4  # quarter turn in 2 s: heading goes from 0 to pi/2
    for _ in range(20):
        obs, _, _ = env.step(a)
    a = hold(obs)
    a[0] = 0.3  # forward in the robot frame is now world +y
    for _ in range(10):
        obs, _, _ = env.step(a)
    x, y, yaw = env.base_pose()
    np.testing.assert_allclose(yaw, np.pi / 2, atol=1e-6)
    # The turn in place does not translate; then 0.3 m/s for 1 s along world +y.
    np.testing.assert_allclose([x - x0, y - y0], [0.0, 0.3], atol=1e-6)
    np.testing.assert_allclose(obs["state"][0:3], [0.3, 0.0, 0.0], atol=1e-7)


def test_base_command_clipped_to_limits():
    env = MobileReachEnv(cameras=())
    obs = env.reset(0)
    a = hold(obs)
    a[0:3] = [10.0, -10.0, 10.0]
    obs, _, _ = env.step(a)
    np.testing.assert_allclose(
        obs["state"][0:3], [*sim_env.BASE_LIMITS[:2] * [1, -1], sim_env.BASE_LIMITS[2]], rtol=1e-6
    )


@pytest.mark.parametrize(("arm", "other"), [(slice(7, 14), slice(15, 22)), (slice(15, 22), slice(7, 14))])
def test_arm_targets_move_only_the_named_arm_at_bounded_rate(arm, other):
    env = MobileReachEnv(cameras=(), fps=10)
    obs = env.reset(0)
    start = obs["state"].copy()
    a = hold(obs)
    a[arm.start] = start[arm.start] - 1.0  # shoulder pitch: far target
    a[arm.start + 1] = start[arm.start + 1] + 0.05  # shoulder abduction: within one step
    ee = {side: env.ee_pos(side) for side in ("left", "right")}
    obs, _, _ = env.step(a)
    step = sim_env.JOINT_RATE / 10
    np.testing.assert_allclose(obs["state"][arm.start], start[arm.start] - step, atol=1e-6)
    np.testing.assert_allclose(obs["state"][arm.start + 1], start[arm.start + 1] + 0.05, atol=1e-6)
    np.testing.assert_array_equal(obs["state"][other], start[other])
    np.testing.assert_array_equal(obs["state"][0:7], start[0:7])
    moved = "left" if arm.start == 7 else "right"
    still = "right" if moved == "left" else "left"
    assert np.linalg.norm(env.ee_pos(moved) - ee[moved]) > 0.01
    # Only float32 rounding of the held targets (the state is float32) may move the other hand.
    np.testing.assert_allclose(env.ee_pos(still), ee[still], atol=1e-6)


def test_gripper_action_opens_and_closes_the_named_gripper():
    env = MobileReachEnv(cameras=(), fps=10)
    obs = env.reset(0)
    a = hold(obs)
    a[sim_env.LEFT_GRIPPER] = -1.0
    for _ in range(10):
        obs, _, _ = env.step(a)
    assert obs["state"][sim_env.LEFT_GRIPPER] == -1.0
    assert obs["state"][sim_env.RIGHT_GRIPPER] == 1.0


def test_done_at_max_steps():
    env = MobileReachEnv(cameras=(), max_steps=4)
    obs = env.reset(0)
    dones = [env.step(hold(obs))[2] for _ in range(4)]
    assert dones == [False, False, False, True]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(22), r"action.*shape"),
        (np.zeros((1, 23)), r"action.*shape"),
        (np.r_[np.zeros(5), np.nan, np.zeros(17)], r"action.*dim 5"),
        (["x"] * 23, r"action.*numeric"),
    ],
)
def test_bad_action_raises(env, action, message):
    env.reset(0)
    with pytest.raises(InputError, match=message):
        env.step(action)


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_bad_seed_raises(seed):
    with pytest.raises(InputError, match="seed"):
        MobileReachEnv(cameras=()).reset(seed)


def test_step_before_reset_raises():
    with pytest.raises(InputError, match="reset"):
        MobileReachEnv(cameras=()).step(np.zeros(23))


def test_unknown_camera_raises():
    with pytest.raises(InputError, match="chest"):
        MobileReachEnv(cameras=("head", "chest"))


def test_state_ends_with_the_target_in_the_robot_frame():
    env = MobileReachEnv(cameras=(), fps=10)
    obs = env.reset(4, arm_heavy=False)
    x, y, yaw = env.base_pose()
    rel = env.target.pos - np.array([x, y, 0.0])
    c, s = np.cos(yaw), np.sin(yaw)
    expected = [c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], env.target.pos[2]]
    np.testing.assert_allclose(obs["state"][sim_env.TARGET_STATE], expected, atol=1e-6)
    turn = hold(obs)
    turn[2] = 1.0  # yaw: the target turns the other way in the robot frame
    before = np.arctan2(obs["state"][24], obs["state"][23])
    obs, _, _ = env.step(turn)
    after = np.arctan2(obs["state"][24], obs["state"][23])
    assert np.remainder(before - after, 2 * np.pi) == pytest.approx(0.1, abs=1e-5)
    assert np.linalg.norm(obs["state"][23:25]) == pytest.approx(np.linalg.norm(rel[:2]), abs=1e-5)


def test_progress_reports_reach_and_the_named_hand():
    env = MobileReachEnv(cameras=(), fps=10)
    env.reset(1, arm_heavy=True)
    p = env.progress()
    assert p["in_reach"] == 1.0 and p["hand"] == float(("left", "right").index(env.target.hand))
    assert p["hand_distance"] == pytest.approx(env.ee_distance())
    env.reset(1, arm_heavy=False)
    assert env.progress()["in_reach"] == 0.0  # 1.5-4 m away


def test_task_names_the_scene_kind_for_the_per_kind_summary():
    env = MobileReachEnv(cameras=(), fps=10, arm_heavy_fraction=0.3)
    assert env.task is None  # before any reset
    env.reset(1, arm_heavy=True)
    assert env.task == "arm_heavy"
    env.reset(1, arm_heavy=False)
    assert env.task == "base_heavy"
    kinds = []
    for seed in range(40):
        env.reset(seed)
        kinds.append(env.task)
        assert env.task == ("arm_heavy" if env.arm_heavy else "base_heavy")
    assert set(kinds) == {"arm_heavy", "base_heavy"}


def test_state_ends_with_both_hands_in_the_robot_frame():
    env = MobileReachEnv(cameras=(), fps=10)
    obs = env.reset(7, arm_heavy=False)
    turn = hold(obs)
    turn[0], turn[2] = 0.5, 0.8  # drive and turn: the hands move in the world, not in the robot frame
    for _ in range(3):
        obs, _, _ = env.step(turn)
    for side in ("left", "right"):
        np.testing.assert_allclose(
            obs["state"][sim_env.EE_STATE[side]], env.in_robot_frame(env.ee_pos(side)), atol=1e-6
        )
    np.testing.assert_allclose(
        obs["state"][sim_env.EE_STATE["left"]][1], -obs["state"][sim_env.EE_STATE["right"]][1], atol=1e-5
    )
    reach = hold(obs)
    reach[sim_env.LEFT_ARM] += 0.3  # move the left arm only: only the left hand's state changes
    before = obs["state"].copy()
    obs, _, _ = env.step(reach)
    assert np.linalg.norm(obs["state"][sim_env.EE_STATE["left"]] - before[sim_env.EE_STATE["left"]]) > 1e-3
    np.testing.assert_allclose(
        obs["state"][sim_env.EE_STATE["right"]], before[sim_env.EE_STATE["right"]], atol=1e-6
    )


def test_a_step_without_images_renders_them_on_request():
    """``step(render=False)`` skips the cameras; ``render()`` then shows what ``step`` would have."""
    lazy, eager = MobileReachEnv(resolution=16), MobileReachEnv(resolution=16)
    obs_l, obs_e = lazy.reset(5), eager.reset(5)
    rng = np.random.default_rng(1)
    for _ in range(4):
        a = hold(obs_e) + rng.normal(0, 0.3, 23).astype(np.float32)
        obs_l, _, _ = lazy.step(a, render=False)
        obs_e, _, _ = eager.step(a)
        assert obs_l["images"] is None
        np.testing.assert_array_equal(obs_l["state"], obs_e["state"])
    images = lazy.render()
    assert set(images) == set(obs_e["images"])
    for cam, img in obs_e["images"].items():
        np.testing.assert_array_equal(images[cam], img)
    lazy.close()
    eager.close()


def test_envs_of_one_model_share_a_renderer_that_draws_each_envs_own_scene():
    """Lockstep eval's envs share one GL context (``shared_renderer``); each still gets the images
    a renderer of its own gives for its state, and closing one leaves the others rendering."""
    from balanced_pi0.sim.common import make_renderer, render_cameras

    a, b = MobileReachEnv(resolution=16), MobileReachEnv(resolution=16)
    obs = a.reset(3)
    b.reset(4)
    for _ in range(3):
        obs, _, _ = a.step(hold(obs), render=False)
    images_a, images_b = a.render(), b.render()
    assert a._renderer is b._renderer
    assert MobileReachEnv(resolution=8).render()["head"].shape == (8, 8, 3)  # one per resolution
    assert any(not np.array_equal(images_a[c], images_b[c]) for c in images_a)
    for env, images in ((a, images_a), (b, images_b)):
        own = make_renderer(env.model, 16)
        try:
            expected = render_cameras(own, env.data, env.cameras)
        finally:
            own.close()
        for cam in env.cameras:
            np.testing.assert_array_equal(images[cam], expected[cam], err_msg=cam)
    a.close()
    again = b.render()
    for cam in b.cameras:
        np.testing.assert_array_equal(again[cam], images_b[cam])
    b.close()
