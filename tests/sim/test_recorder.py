"""generate_episodes: Episode contract, seeding, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from balanced_pi0.config import SimConfig
from balanced_pi0.sim import env as sim_env
from balanced_pi0.sim.recorder import episode_seed, generate_episodes

CAMERAS = ("head", "left_wrist", "right_wrist")


def test_episodes_contract_and_success_print(capsys):
    episodes = list(generate_episodes(SimConfig(episodes=3, resolution=16, seed=5), CAMERAS))
    assert len(episodes) == 3
    for i, ep in enumerate(episodes):
        t = len(ep.action)
        assert ep.state.shape == (t, sim_env.STATE_DIM) and ep.action.shape == (t, 23)
        assert ep.state.dtype == ep.action.dtype == np.float32
        assert set(ep.images) == set(CAMERAS)
        assert all(img.shape == (t, 16, 16, 3) and img.dtype == np.uint8 for img in ep.images.values())
        assert ep.seed == episode_seed(5, i) and isinstance(ep.arm_heavy, bool)
        assert ep.task.startswith("reach the ")
    assert "expert success" in capsys.readouterr().out


def _assert_same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.task, x.seed, x.success, x.arm_heavy) == (y.task, y.seed, y.success, y.arm_heavy)
        np.testing.assert_array_equal(x.state, y.state)
        np.testing.assert_array_equal(x.action, y.action)
        for cam in CAMERAS:
            np.testing.assert_array_equal(x.images[cam], y.images[cam])


def test_same_config_same_episodes():
    cfg = SimConfig(episodes=2, resolution=16, seed=1)
    _assert_same(list(generate_episodes(cfg, CAMERAS)), list(generate_episodes(cfg, CAMERAS)))


def test_worker_processes_change_no_byte():
    """Episodes rolled out by two worker processes (one env each, every env reused across episodes)
    equal those of one env in this process, in the same order: nothing carries across resets."""
    cfg = SimConfig(episodes=5, resolution=16, seed=2, action_noise=0.1)
    _assert_same(
        list(generate_episodes(cfg, CAMERAS, workers=0)), list(generate_episodes(cfg, CAMERAS, workers=2))
    )


def test_in_process_generators_running_at_once_share_nothing():
    """Two ``workers=0`` generators of different configs, interleaved, each give what they give alone."""
    a_cfg = SimConfig(episodes=3, resolution=16, seed=3)
    b_cfg = SimConfig(episodes=3, resolution=24, seed=4, action_noise=0.1)
    a_gen, b_gen = generate_episodes(a_cfg, CAMERAS, workers=0), generate_episodes(b_cfg, CAMERAS, workers=0)
    a, b = [], []
    for x, y in zip(a_gen, b_gen, strict=True):
        a.append(x)
        b.append(y)
    _assert_same(a, list(generate_episodes(a_cfg, CAMERAS, workers=0)))
    _assert_same(b, list(generate_episodes(b_cfg, CAMERAS, workers=0)))


def test_episode_seeds_are_distinct_across_configs():
    seeds = {episode_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150


def test_action_noise_perturbs_the_executed_actions_and_records_the_experts():
    """DART: with noise the executed actions (the realised base velocity in the state) differ from the
    recorded ones, which are the expert's; the noise is drawn from the episode's seed."""
    from balanced_pi0.sim.env import MobileReachEnv
    from balanced_pi0.sim.expert import ScriptedExpert
    from balanced_pi0.sim.recorder import rollout

    env = MobileReachEnv(cameras=(), max_steps=40)
    clean = rollout(env, ScriptedExpert(), 3)
    scale = env.action_noise_scale(0.2)
    assert scale[14] == scale[22] == 0.0 and scale[0] == pytest.approx(0.2 * 0.6)
    noisy = rollout(env, ScriptedExpert(), 3, noise_scale=scale)
    assert not np.array_equal(clean.state[1:5], noisy.state[1:5])
    again = rollout(env, ScriptedExpert(), 3, noise_scale=scale)
    np.testing.assert_array_equal(noisy.action, again.action)  # seeded by the episode
    # the state holds the realised (executed) base velocity: equal to the recorded action when clean,
    # off by the noise when not
    np.testing.assert_allclose(clean.state[1:, :3], clean.action[:-1, :3], atol=1e-6)
    assert np.abs(noisy.state[1:, :3] - noisy.action[:-1, :3]).max() > 0.01


def test_a_worker_that_fails_stops_the_generation_instead_of_hanging():
    """An env that cannot start in a worker (here: an unknown camera) ends the run with an error;
    a pool that replaced dead workers would wait forever."""
    from concurrent.futures.process import BrokenProcessPool

    from balanced_pi0.errors import InputError

    with pytest.raises(InputError, match="camera"):
        list(generate_episodes(SimConfig(episodes=2, resolution=16), ("nose",), workers=0))
    with pytest.raises(BrokenProcessPool, match="sim worker process died before episode 1 of 2"):
        list(generate_episodes(SimConfig(episodes=2, resolution=16), ("nose",), workers=1))
