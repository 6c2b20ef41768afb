"""The curriculum: episode sets from split.json and arm_heavy.json, phases, per-phase loaders."""

from __future__ import annotations

import numpy as np
import pytest

from balanced_pi0 import config as _config
from balanced_pi0 import curriculum, errors
from test_train import ToyLoader, make_episodes, make_params


def test_arm_heavy_set_never_includes_validation(tmp_path):
    (tmp_path / "split.json").write_text('{"train": [0, 1, 2, 5], "val": [3, 4]}')
    (tmp_path / "arm_heavy.json").write_text('{"episodes": [1, 3, 5]}')
    sets = curriculum.load_episode_sets(tmp_path / "split.json", tmp_path / "arm_heavy.json")
    np.testing.assert_array_equal(sets["arm_heavy"], [1, 5])
    np.testing.assert_array_equal(sets["train"], [0, 1, 2, 5])


def test_curriculum_phase_without_its_file_names_the_phase():
    phases = [_config.PhaseConfig(steps=2, episodes="arm_heavy")]
    with pytest.raises(errors.InputError, match=r"curriculum\[0\].*arm_heavy"):
        curriculum.build_curriculum(phases, {"train": np.arange(3)})


def test_curriculum_switches_episode_sets_at_the_boundary(tmp_path):
    params = make_params(
        "jax", curriculum=[{"steps": 3, "episodes": "arm_heavy"}, {"steps": 4, "episodes": "train"}]
    )
    seen = {}
    episodes = make_episodes()
    sets = {"train": np.arange(6), "arm_heavy": np.array([1, 4])}
    phases = curriculum.build_curriculum(params.train.curriculum, sets)
    batches = curriculum.CurriculumBatches(
        phases, lambda ids, seed: ToyLoader(episodes, ids, seed, batch_size=8), params.train.seed
    )
    for step in range(7):
        phase, batch = batches.batch(step)
        seen[step] = (phase.index, set(batch["episode_index"].tolist()))
    assert all(seen[s][0] == 0 and seen[s][1] <= {1, 4} for s in range(3))
    assert all(seen[s][0] == 1 for s in range(3, 7))
    assert set().union(*(seen[s][1] for s in range(3, 7))) - {1, 4}, (
        "phase 2 must draw beyond the arm-heavy set"
    )
    with pytest.raises(IndexError):
        batches.batch(7)
