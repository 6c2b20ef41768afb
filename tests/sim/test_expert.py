"""ScriptedExpert: success rate, and which body parts move in each kind of episode."""

from __future__ import annotations

import numpy as np
import pytest

from balanced_pi0.sim.env import MobileReachEnv
from balanced_pi0.sim.expert import ScriptedExpert
from balanced_pi0.sim.recorder import episode_seed, rollout


def rollouts(n: int, arm_heavy_fraction: float = 0.5):
    env = MobileReachEnv(cameras=(), arm_heavy_fraction=arm_heavy_fraction)
    expert = ScriptedExpert()
    return [rollout(env, expert, episode_seed(0, i)) for i in range(n)]


def test_expert_success_rate_at_least_95_percent():
    # Kinematic rollouts without cameras take ~10 ms each, so the spec's rate is checked by default.
    episodes = rollouts(100)
    rate = np.mean([e.success for e in episodes])
    print(f"expert success over 100 seeds: {rate:.1%}")
    assert rate >= 0.95
    assert len({len(e.action) for e in episodes}) > 10  # variable lengths: chunks pad at episode ends
    assert 0 < np.mean([e.arm_heavy for e in episodes]) < 1


@pytest.mark.slow
@pytest.mark.parametrize("arm_heavy_fraction", [0.0, 1.0])
def test_expert_success_rate_per_placement(arm_heavy_fraction):
    episodes = rollouts(1000, arm_heavy_fraction)
    rate = np.mean([e.success for e in episodes])
    print(f"expert success over 1000 seeds, arm_heavy_fraction={arm_heavy_fraction}: {rate:.1%}")
    assert rate >= 0.95


def test_arm_heavy_episodes_keep_the_base_still():
    for ep in rollouts(4, arm_heavy_fraction=1.0):
        assert ep.arm_heavy and ep.success
        np.testing.assert_array_equal(ep.action[:, 0:3], 0.0)
        hand = slice(7, 14) if "left hand" in ep.task else slice(15, 22)
        assert np.ptp(ep.state[:, hand], axis=0).max() > 0.1


def test_base_heavy_episodes_drive_then_reach():
    for ep in rollouts(4, arm_heavy_fraction=0.0):
        assert not ep.arm_heavy and ep.success
        driving = np.flatnonzero(np.abs(ep.action[:, 0:3]).sum(1) > 0)
        assert len(driving) > 10
        other = slice(15, 22) if "left hand" in ep.task else slice(7, 14)
        assert np.ptp(ep.state[:, other], axis=0).max() == 0.0  # the other arm holds
        # The named arm and the torso only move once the base has stopped.
        hand = slice(7, 14) if "left hand" in ep.task else slice(15, 22)
        for part in (hand, slice(3, 7)):
            assert np.ptp(ep.state[: driving[-1] + 1, part], axis=0).max() == 0.0
            assert np.ptp(ep.state[:, part], axis=0).max() > 0.01


def test_cameras_see_the_cube_when_the_hand_arrives():
    """Hiding the cube changes the head and named-wrist images at the end of an arm-heavy episode."""
    env = MobileReachEnv(resolution=32, arm_heavy_fraction=1.0)
    expert = ScriptedExpert()
    obs = env.reset(episode_seed(0, 0))
    expert.reset(env)
    done = False
    while not done:
        obs, success, done = env.step(expert.act(obs))
    assert success
    mocap = env.model.body(f"cube_{env.target.colour}").mocapid[0]
    env.data.mocap_pos[mocap] = (0.0, 0.0, -1.0)
    env._forward()
    hidden = env.render()
    for cam in ("head", f"{env.target.hand}_wrist"):
        assert not np.array_equal(obs["images"][cam], hidden[cam]), cam
    env.close()
