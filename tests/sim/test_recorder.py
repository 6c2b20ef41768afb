"""generate_episodes: Episode contract, seeding, determinism."""

from __future__ import annotations

import numpy as np

from balanced_pi0.config import SimConfig
from balanced_pi0.sim.recorder import episode_seed, generate_episodes

CAMERAS = ("head", "left_wrist", "right_wrist")


def test_episodes_contract_and_success_print(capsys):
    episodes = list(generate_episodes(SimConfig(episodes=3, resolution=16, seed=5), CAMERAS))
    assert len(episodes) == 3
    for i, ep in enumerate(episodes):
        t = len(ep.action)
        assert ep.state.shape == (t, 26) and ep.action.shape == (t, 23)
        assert ep.state.dtype == ep.action.dtype == np.float32
        assert set(ep.images) == set(CAMERAS)
        assert all(img.shape == (t, 16, 16, 3) and img.dtype == np.uint8 for img in ep.images.values())
        assert ep.seed == episode_seed(5, i) and isinstance(ep.arm_heavy, bool)
        assert ep.task.startswith("reach the ")
    assert "expert success" in capsys.readouterr().out


def test_same_config_same_episodes():
    cfg = SimConfig(episodes=2, resolution=16, seed=1)
    a, b = list(generate_episodes(cfg, CAMERAS)), list(generate_episodes(cfg, CAMERAS))
    for x, y in zip(a, b, strict=True):
        assert (x.task, x.seed, x.success, x.arm_heavy) == (y.task, y.seed, y.success, y.arm_heavy)
        np.testing.assert_array_equal(x.state, y.state)
        np.testing.assert_array_equal(x.action, y.action)
        for cam in CAMERAS:
            np.testing.assert_array_equal(x.images[cam], y.images[cam])


def test_episode_seeds_are_distinct_across_configs():
    seeds = {episode_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150
