"""Every named experiment is a params file the typed loader accepts."""

from pathlib import Path

import pytest
import yaml

from balanced_pi0 import config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


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


def test_metaworld_summary_reads_every_run_of_the_matrix():
    """The summary stage lists one eval metrics file per (variant, seed) of the Meta-World ablation (DVC
    cannot template a dep list), so a changed matrix must change the list too."""
    import yaml

    root = Path(__file__).resolve().parents[1] / "experiments"
    params = config.load(root / "metaworld.yaml")
    stage = yaml.safe_load((root / "metaworld" / "dvc.yaml").read_text())["stages"]["summary"]
    runs = {d for d in stage["deps"] if d.startswith("runs/")}
    expected = {
        f"runs/{v}-s{s}/eval/metrics.json" for v in params.ablation.variants for s in params.ablation.seeds
    }
    assert runs == expected
    tasks = params.dataset.source.removeprefix("metaworld:").split(",")
    assert len(tasks) >= 3 and params.eval.rollouts % len(tasks) == 0  # the same scenes count per task
    assert params.eval.rollouts // len(tasks) >= 30


def test_the_paper_reads_the_metaworld_pipelines_own_summary():
    """The paper's appendix reads a committed copy (so that `make repro` never runs the Meta-World
    pipeline); `make metaworld` writes it, and it must be that pipeline's output, byte for byte."""
    ours = ROOT / "experiments" / "metaworld" / "results" / "summary.json"
    copy = ROOT / "paper" / "metaworld_summary.json"
    assert copy.read_bytes() == ours.read_bytes(), "run `make metaworld` (it copies the summary)"
    paper = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["paper"]
    assert (
        "paper/metaworld_summary.json" in paper["deps"]
        and "--metaworld paper/metaworld_summary.json" in paper["cmd"]
    )
    assert not any(d.startswith("experiments/") for d in paper["deps"])
