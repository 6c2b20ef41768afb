"""The report: statistics over seeds, paired comparisons, findings, and a paper built from files."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from balanced_pi0 import config, report
from balanced_pi0.groups import R1PRO

REPO = Path(__file__).resolve().parents[1]


def test_t_interval_matches_scipy():
    x = [0.2, 0.5, 0.35, 0.41]
    got = report.t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert got["mean"] == pytest.approx(np.mean(x)) and got["n"] == 4
    assert (got["lo"], got["hi"]) == pytest.approx((lo, hi))
    one = report.t_interval([0.3, float("nan")])
    assert one["n"] == 1 and math.isnan(one["lo"])


@pytest.mark.parametrize(
    ("lo", "hi", "higher", "expected"),
    [
        (0.1, 0.3, True, "better"),
        (0.1, 0.3, False, "worse"),
        (-0.3, -0.1, True, "worse"),
        (-0.1, 0.2, True, "no detectable difference"),
        (-1e-6, 2e-6, True, "identical within numerical noise"),
    ],
)
def test_verdicts(lo, hi, higher, expected):
    assert report.verdict({"n": 3, "mean": 0.0, "lo": lo, "hi": hi}, higher) == expected


def _eval_metrics(arm_skill: float, success: float) -> dict:
    groups = {
        g.name: {"skill": arm_skill if "arm" in g.name else 0.5, "motion_ratio": 0.8} for g in R1PRO.groups
    }
    groups["left_arm"]["skill"] = arm_skill - 0.1
    groups["right_arm"]["skill"] = arm_skill + 0.1
    closed = {
        "policy": {
            "success_rate": success,
            "successes": round(success * 10),
            "episodes": 10,
            "arm_idle_fraction": 0.25,
            "outcomes": {"success": round(success * 10), "base_not_arrived": 10 - round(success * 10)},
        },
        "expert": {
            "episodes": 4,
            "successes": 4,
            "success_rate": 1.0,
            "success_ci95": [0.5, 1.0],
            "arm_idle_fraction": 0.0,
        },
    }
    return {"offline": {"groups": groups}, "closed_loop": closed}


def test_paired_comparison_uses_same_seed_differences():
    per_run = {
        "main": {0: {m: 0.5 for m, _, _ in report.METRICS}, 1: {m: 0.7 for m, _, _ in report.METRICS}},
        "delta": {0: {m: 0.6 for m, _, _ in report.METRICS}, 1: {m: 0.8 for m, _, _ in report.METRICS}},
    }
    summary = report.summarize(per_run, {"weighting": ["main", "delta"]})
    c = next(c for c in summary["comparisons"] if c["metric"] == "arm_skill")
    # The paired differences are both +0.1: zero spread, so the interval is a point.
    assert c["diff"]["mean"] == pytest.approx(0.1) and c["verdict"] == "better"
    idle = next(c for c in summary["comparisons"] if c["metric"] == "arm_idle_fraction")
    assert idle["verdict"] == "worse"  # more idle arms is worse
    assert "delta vs main" in report.finding_text(c) and "better" in report.finding_text(c)


def test_min_detectable_difference_is_the_two_proportion_power_formula():
    # 180 rollouts a variant at a 60 % reference: about 14.5 points, so 15 points is resolvable
    mdd = report.min_detectable_difference(0.6, 180)
    assert mdd == pytest.approx(2.8016 * np.sqrt(2 * 0.6 * 0.4 / 180), rel=1e-4)
    assert 0.14 < mdd < 0.15
    assert report.min_detectable_difference(1.0, 180) == report.min_detectable_difference(0.95, 180)


def test_overdispersion_is_pearson_chi2_over_df_pooled_over_cells():
    # Seeds at 10, 30 and 50 of 60 (pooled 50 %): χ² = Σ (k − 30)² / (60 · 0.25) = 800 / 15 on 2 df.
    spread = [(10, 60), (30, 60), (50, 60)]
    d = report.overdispersion([spread])
    assert d["phi"] == pytest.approx(800 / 15 / 2) and d["df"] == 2
    assert d["dispersion"] == d["phi"]
    # Seeds that agree exactly add df but no χ²; cells at 0 or 100 % and single seeds add nothing.
    d = report.overdispersion([spread, [(30, 60)] * 3, [(60, 60)] * 3, [(0, 60)] * 2, [(20, 60)]])
    assert d["phi"] == pytest.approx(800 / 15 / 4) and d["df"] == 4
    # Less spread than binomial noise does not shrink the variance below the binomial one.
    assert report.overdispersion([[(30, 60)] * 3])["dispersion"] == 1.0
    perfect = report.overdispersion([[(60, 60)] * 3])  # nothing to estimate it from
    assert perfect["df"] is None and perfect["dispersion"] == 1.0 and math.isnan(perfect["phi"])


def test_dispersion_widens_the_smallest_detectable_difference_and_the_test():
    base = report.min_detectable_difference(0.5, 180)
    # φ scales the variance: √φ the difference (normal quantiles without df) ...
    assert report.min_detectable_difference(0.5, 180, dispersion=4.0) == pytest.approx(2 * base)
    # ... and Student-t quantiles on few df widen it further.
    assert report.min_detectable_difference(0.5, 180, dispersion=4.0, df=4) > 2 * base
    main = {"successes": 90, "rollouts": 180, "rate": 0.5}
    more = {"successes": 115, "rollouts": 180, "rate": 115 / 180}  # +13.9 points: z ≈ 2.7
    assert report.pooled_verdict(main, more) == "better"
    assert report.pooled_verdict(main, more, dispersion=3.0, df=22) == "no detectable difference"
    assert report.pooled_verdict(main, more, dispersion=1.0, df=0) == "undetermined"
    # seeds needed for 15 points at 50 %, 60 rollouts a seed: 3 when rollouts are independent, more with φ
    independent = {"dispersion": 1.0, "df": 10_000}
    assert report.seeds_needed(0.5, 60, independent) == 3
    assert report.seeds_needed(0.5, 60, {"dispersion": 3.0, "df": 22}) > 3 * 2
    assert report.seeds_needed(0.5, 60, {"dispersion": 1.0, "df": None}) is None


def test_pooled_success_sums_seeds_and_tests_the_difference():
    closed = {
        "main": {
            s: {"successes": 30, "episodes": 60, "outcomes": {"success": 30, "arm_idle": 30}}
            for s in range(3)
        },
        "delta": {s: {"successes": 45, "episodes": 60, "outcomes": {"success": 45}} for s in range(3)},
        "same": {s: {"successes": 31, "episodes": 60, "outcomes": None} for s in range(3)},
    }
    closed["main"][0]["per_seed"] = [
        {"outcome": "wrong_place", "closest_approach_m": d} for d in (0.1, 0.2)
    ] + [{"outcome": "arm_idle", "closest_approach_m": 0.01}]
    closed["main"][1]["per_seed"] = [{"outcome": "wrong_place", "closest_approach_m": 0.9}]
    for s, (arm, base) in enumerate([(2, 8), (1, 9), (0, 10)]):  # successes of 10 scenes per kind
        closed["main"][s]["by_task"] = {
            "arm_heavy": {"successes": arm, "episodes": 10},
            "base_heavy": {"successes": base, "episodes": 10},
        }
    pooled = report.pooled_success(closed)
    by_kind = pooled["main"]["by_task"]
    assert list(by_kind) == ["arm_heavy", "base_heavy"] and pooled["delta"]["by_task"] == {}
    assert (by_kind["arm_heavy"]["successes"], by_kind["arm_heavy"]["rollouts"]) == (3, 30)
    assert by_kind["base_heavy"]["rate"] == pytest.approx(0.9) and by_kind["base_heavy"]["lo"] < 0.9
    assert pooled["main"]["wrong_place_closest_m"] == pytest.approx(0.2)
    # Per scene kind: tested where both variants report the kind, with the kinds' own dispersion.
    for s, arm in enumerate([9, 10, 8]):
        closed["delta"][s]["by_task"] = {"arm_heavy": {"successes": arm, "episodes": 10}}
    kinds = report.pooled_success(closed)
    cells = report.scene_cells(closed)
    assert sorted(cells) == sorted(
        [[(2, 10), (1, 10), (0, 10)], [(8, 10), (9, 10), (10, 10)], [(9, 10), (10, 10), (8, 10)]]
    )
    scene_phi = report.overdispersion(cells)
    per_run0 = {v: {s: {m: 0.5 for m, _, _ in report.METRICS} for s in range(3)} for v in closed}
    by_scene = [
        c
        for c in report.summarize(per_run0, {"q": ["main", "delta", "same"]}, kinds, None, scene_phi)[
            "comparisons"
        ]
        if c["metric"] == "pooled_success_by_scene"
    ]
    assert [(c["variant"], c["scene"]) for c in by_scene] == [
        ("delta", "arm_heavy")
    ]  # "same" reports no kinds
    c = by_scene[0]
    assert c["diff"]["mean"] == pytest.approx(27 / 30 - 3 / 30) and c["diff"]["n"] == 30
    assert c["verdict"] == "better" and c["min_detectable_difference"] >= c["min_detectable_if_independent"]
    assert "on arm_heavy scenes" in report.finding_text(c)  # median over seeds, failures only
    assert pooled["delta"]["wrong_place_closest_m"] is None
    assert pooled["main"]["successes"] == 90 and pooled["main"]["rollouts"] == 180
    assert pooled["main"]["outcomes"]["arm_idle"] == 90 and pooled["same"]["outcomes"]["success"] == 0
    assert pooled["main"]["lo"] < 0.5 < pooled["main"]["hi"]
    assert report.pooled_verdict(pooled["main"], pooled["delta"]) == "better"
    assert report.pooled_verdict(pooled["delta"], pooled["main"]) == "worse"
    assert report.pooled_verdict(pooled["main"], pooled["same"]) == "no detectable difference"
    per_run = {v: {s: {m: 0.5 for m, _, _ in report.METRICS} for s in range(3)} for v in closed}
    summary = report.summarize(per_run, {"q": ["main", "delta", "same"]}, pooled)
    c = [c for c in summary["comparisons"] if c["metric"] == "pooled_success"]
    assert [x["variant"] for x in c] == ["delta", "same"]
    assert c[0]["diff"]["mean"] == pytest.approx(0.25) and c[0]["min_detectable_difference"] > 0.1
    assert c[0]["min_detectable_difference"] == c[0]["min_detectable_if_independent"]  # no dispersion given
    assert "smallest detectable difference" in report.finding_text(c[0])
    # With the seeds' dispersion, the same comparison needs a larger difference.
    dispersion = report.overdispersion(report.seed_cells(closed))
    assert dispersion["df"] == 6 and dispersion["dispersion"] == 1.0  # every seed of a variant agrees
    wide = {"phi": 9.0, "dispersion": 9.0, "df": 4}
    c = [c for c in report.summarize(per_run, {"q": ["main", "delta"]}, pooled, wide)["comparisons"]]
    c = next(x for x in c if x["metric"] == "pooled_success")
    assert c["min_detectable_difference"] > 3 * c["min_detectable_if_independent"]
    assert c["verdict"] == "no detectable difference"


@pytest.fixture
def pipeline_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = config.from_dict(
        {
            "ablation": {"seeds": [0, 1, 2], "variants": {"main": {}, "arm_focused": PRESET_ARM}},
            "report": {"questions": {"weighting": ["main", "arm_focused"]}, "loss_curves": ["arm_focused"]},
        }
    )
    rng = np.random.default_rng(0)
    for v in params.ablation.variants:
        for s in params.ablation.seeds:
            run = tmp_path / "runs" / report.run_name(v, s)
            (run / "eval").mkdir(parents=True)
            skill = 0.3 + 0.1 * s + (0.05 if v == "arm_focused" else 0.0)
            (run / "eval" / "metrics.json").write_text(json.dumps(_eval_metrics(skill, 0.5)))
            tsv_dir = run / "live" / "plots" / "metrics" / "group_loss"
            tsv_dir.mkdir(parents=True)
            for g in R1PRO.group_names:
                rows = "".join(f"{k}\t{rng.uniform(0.1, 1.0)}\n" for k in range(0, 50, 10))
                (tsv_dir / f"{g}.tsv").write_text(f"step\t{g}\n{rows}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "split.json").write_text(json.dumps({"train": [0, 1, 2], "val": [3]}))
    (tmp_path / "data" / "arm_heavy.json").write_text(json.dumps({"episodes": [1]}))
    analyze = tmp_path / "results" / "analyze"
    analyze.mkdir(parents=True)
    (analyze / "metrics.json").write_text(json.dumps(ANALYZE))
    shutil.copyfile(REPO / "tests" / "assets" / "pixel.png", analyze / "motion_scatter.png")
    (tmp_path / "paper").mkdir()
    shutil.copyfile(REPO / "paper" / "paper.typ", tmp_path / "paper" / "paper.typ")
    return params, tmp_path


ANALYZE = {
    "activity": {
        "moving_threshold": 1e-3,
        "moving_step_share": {g: 0.5 for g in R1PRO.group_names},
        "normalised_change_share": {g: 1 / 6 for g in R1PRO.group_names},
        "arm_moving_step_share": 0.25,
    }
}

PRESET_ARM = {
    "train.loss.strategy": "per_group",
    "train.loss.group_weights": {"left_arm": 3.0, "right_arm": 3.0},
}


def test_paper_builds_from_generated_files_and_repeats_bytes(pipeline_outputs):
    params, root = pipeline_outputs
    report.run(params)
    results = json.loads((root / "paper" / "generated" / "results.json").read_text())
    assert results["setup"]["arm_heavy_episodes"] == 1 and results["setup"]["train_episodes"] == 3
    main = results["variants"]["main"]["arm_skill"]
    assert main["mean"] == pytest.approx(0.4) and main["n"] == 3
    assert results["setup"]["effective_group_weights"]["arm_focused"]["left_arm"] == pytest.approx(
        3 / ((14 * 3 + 9) / 23), abs=1e-6
    )
    c = next(c for c in results["comparisons"] if c["metric"] == "arm_skill")
    assert c["diff"]["mean"] == pytest.approx(0.05) and c["verdict"] == "better"
    pdf = (root / "paper" / "paper.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    figs = {p.name: p.read_bytes() for p in (root / "paper" / "generated").glob("*.png")}
    report.run(params)
    assert (root / "paper" / "paper.pdf").read_bytes() == pdf
    assert {p.name: p.read_bytes() for p in (root / "paper" / "generated").glob("*.png")} == figs


def test_missing_run_names_the_file(pipeline_outputs):
    params, root = pipeline_outputs
    victim = root / "runs" / "arm_focused-s2" / "eval" / "metrics.json"
    victim.unlink()
    with pytest.raises(report.InputError, match=r"arm_focused-s2/eval/metrics\.json: file not found"):
        report.run(params)
    assert not (root / "paper" / "paper.pdf").exists()


# Numbers that are layout, not results: lengths with units, widths in percent, rounding digits.
_ALLOWED = re.compile(
    r"(\d+(\.\d+)?\s*(pt|em|cm|mm|in|fr)\b)|(width:\s*\d+%)|(digits:\s*\d+)|(size:\s*\d+(\.\d+)?pt)"
)


def test_paper_source_has_no_literal_result_numbers():
    text = (REPO / "paper" / "paper.typ").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    body = _ALLOWED.sub("", body)
    decimals = re.findall(r"(?<![\w.])\d+\.\d+", body)
    percents = re.findall(r"\d+\s*%", body)
    assert not decimals, f"literal decimal numbers in paper.typ: {decimals}"
    assert not percents, f"literal percentages in paper.typ: {percents}"


def test_paper_includes_only_generated_or_stage_files():
    text = (REPO / "paper" / "paper.typ").read_text()
    included = re.findall(r'(?:image|json|read)\("([^"]+)"', text)
    assert included
    dvc = (REPO / "dvc.yaml").read_text()
    for path in included:
        resolved = Path("paper", path).as_posix().replace("paper/../", "")
        assert resolved.startswith("paper/generated/") or resolved in dvc, f"{path} is not a pipeline output"
