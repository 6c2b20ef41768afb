"""The Meta-World summary: per-task success of every run and of the expert, pooled and per seed."""

import json
from pathlib import Path

import pytest
import yaml

from balanced_pi0 import cli, report
from balanced_pi0.evaluate.closed_loop import wilson_interval
from test_report import pipeline_outputs  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
TASKS = ["reach-v3", "drawer-close-v3"]


def _policy(successes: dict[str, int], n: int = 10) -> dict:
    return {
        "episodes": n * len(successes),
        "successes": sum(successes.values()),
        "by_task": {t: {"episodes": n, "successes": k} for t, k in successes.items()},
    }


def _runs(tmp_path):
    counts = {  # (variant, seed) -> successes per task, of 10 scenes each
        ("main", 0): {"reach-v3": 10, "drawer-close-v3": 6},
        ("main", 1): {"reach-v3": 9, "drawer-close-v3": 5},
        ("mask_none", 0): {"reach-v3": 4, "drawer-close-v3": 6},
        ("mask_none", 1): {"reach-v3": 3, "drawer-close-v3": 4},
    }
    for (v, s), k in counts.items():
        path = tmp_path / "runs" / f"{v}-s{s}" / "eval" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"offline": {}, "closed_loop": {"policy": _policy(k)}}))
    expert = tmp_path / "expert.json"
    expert.write_text(json.dumps(_policy({"reach-v3": 10, "drawer-close-v3": 9})))
    params = tmp_path / "metaworld.yaml"
    doc = yaml.safe_load((REPO / "experiments" / "metaworld.yaml").read_text())
    doc["dataset"]["source"] = "metaworld:" + ",".join(TASKS)
    doc["eval"]["rollouts"] = 20
    doc["ablation"] = {
        "seeds": [0, 1],
        "variants": {"main": {}, "mask_none": {"train.loss.mask_normalization": "none"}},
    }
    params.write_text(yaml.safe_dump(doc))
    return params, expert


def test_tables_pool_seeds_per_task_and_compare_with_the_reference(tmp_path):
    params, expert = _runs(tmp_path)
    out = tmp_path / "results" / "summary.json"
    argv = ["metaworld-summary", "--params", str(params), "--runs", str(tmp_path / "runs")]
    assert cli.main([*argv, "--expert", str(expert), "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["tasks"] == TASKS and s["setup"]["rollouts_per_task"] == 10
    reach = s["variants"]["main"]["by_task"]["reach-v3"]
    assert (reach["pooled"]["successes"], reach["pooled"]["rollouts"]) == (19, 20)
    assert reach["pooled"]["lo"] == pytest.approx(wilson_interval(19, 20)[0], abs=1e-6)
    assert reach["seed_mean"]["mean"] == pytest.approx(0.95)
    assert s["variants"]["main"]["overall"]["pooled"]["successes"] == 30
    assert s["expert"]["by_task"]["drawer-close-v3"]["rate"] == pytest.approx(0.9)
    by = {(c["variant"], c["task"]): c for c in s["comparisons"]}
    assert by[("mask_none", "reach-v3")]["diff"] == pytest.approx(7 / 20 - 19 / 20)
    assert by[("mask_none", "reach-v3")]["verdict"] == "worse"
    assert by[("mask_none", "drawer-close-v3")]["verdict"] == "no detectable difference"
    paired = by[("mask_none", "all (paired seeds)")]["diff_interval"]
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(((10 - 16) + (7 - 14)) / 2 / 20)
    md = out.with_suffix(".md").read_text()
    assert "| policy | reach-v3 | drawer-close-v3 | all tasks |" in md
    assert "95 % (19/20" in md and "scripted expert" in md
    # same inputs, same bytes
    first = out.read_bytes()
    assert cli.main([*argv, "--expert", str(expert), "--out", str(out)]) == 0
    assert out.read_bytes() == first


def test_a_run_without_per_task_results_is_named(tmp_path, capsys):
    params, expert = _runs(tmp_path)
    path = tmp_path / "runs" / "mask_none-s1" / "eval" / "metrics.json"
    path.write_text(json.dumps({"offline": {}}))
    argv = ["metaworld-summary", "--params", str(params), "--runs", str(tmp_path / "runs")]
    assert cli.main([*argv, "--expert", str(expert), "--out", str(tmp_path / "s.json")]) == 2
    assert "mask_none-s1" in capsys.readouterr().err


def test_markdown_lists_every_variant():
    s = report.metaworld_tables(
        {"main": {0: _policy({"reach-v3": 3})}}, _policy({"reach-v3": 10}), reference="main"
    )
    s["setup"] = {"rollouts_per_task": 10, "variants": {"main": "the params as they are"}, "seeds": [0]}
    md = report.metaworld_markdown(report._json_clean(s))
    assert "`main`" in md and "30 % (3/10" in md and "100 % (10/10" in md


def test_paper_appendix_reads_the_summary_or_says_it_was_not_run(pipeline_outputs):  # noqa: F811
    params, root = pipeline_outputs  # the working directory is root
    report.run(params)
    results = root / "paper" / "generated" / "results.json"
    assert json.loads(results.read_text())["metaworld"] is None  # the appendix says it was not run
    mw_params, expert = _runs(root / "mw")
    summary = root / "experiments" / "metaworld" / "results" / "summary.json"
    argv = ["metaworld-summary", "--params", str(mw_params), "--runs", str(root / "mw" / "runs")]
    assert cli.main([*argv, "--expert", str(expert), "--out", str(summary)]) == 0
    report.run(params)
    doc = json.loads(results.read_text())
    assert doc["metaworld"]["tasks"] == TASKS
    assert doc["metaworld"]["published"]["rows"] and (root / "paper" / "paper.pdf").exists()
