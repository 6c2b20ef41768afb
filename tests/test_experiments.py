"""Every named experiment is a params file the typed loader accepts."""

from pathlib import Path

import pytest

from balanced_pi0 import config

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def test_there_is_a_gpu_experiment():
    assert any("b1k" in p.name for p in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_params_load(path):
    params = config.load(path)
    for variant in params.ablation.variants:
        config.for_run(params, variant, params.ablation.seeds[0])
    if "b1k" in path.name:
        assert params.dataset.source.startswith("b1k:")
        assert params.model.size == "pi0" and params.model.action_horizon == 50
        assert params.model.tokenizer_path is not None  # PaliGemma's vocabulary: never byte ids
