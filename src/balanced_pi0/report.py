"""``bpi0 paper``: results → the numbers, tables, figures and findings of the paper, then the PDF.

Every number the paper shows comes from here: ``paper/generated/results.json`` (read by
``paper/paper.typ`` through Typst's ``json()``) and the figures beside it. Findings are
written from the measured differences, so the paper says what the ablations showed —
including "no detectable difference" where the confidence interval spans zero.

Statistics: per variant, the mean over seeds with a Student-t 95 % interval; per
comparison, the paired difference (same seed, same data, same initialisation) between a
variant and the question's reference variant, with its t interval. Closed-loop success is
also pooled over seeds (every run rolls out the same held-out scenes), with a Wilson
interval, and each comparison states the smallest success difference it could detect
(``min_detectable_difference``: two-sided 5 % test, 80 % power, at the reference's rate).
The rollouts of one seed share one policy, so pooled tests scale the binomial variance by the
seeds' measured overdispersion (``overdispersion``) rather than treat rollouts as independent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from balanced_pi0 import config as _config
from balanced_pi0 import io
from balanced_pi0.errors import InputError
from balanced_pi0.evaluate.closed_loop import ARM_REACH_DISPLACEMENT
from balanced_pi0.groups import GroupLayout

#: confidence level of every interval in the paper
CI_LEVEL = 0.95

#: (key, label, higher_is_better); the values are read from a run's eval metrics by ``run_metrics``.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("success_rate", "closed-loop success", True),
    ("arm_skill", "arm skill vs holding the pose", True),
    ("arm_motion_error", "arm |ρ − 1| (motion ratio off 1)", False),
    ("base_skill", "base skill vs standing still", True),
    ("arm_idle_fraction", "steps with idle arms", False),
)


#: metrics that are fractions: a variant's interval is clipped to [0, 1] (a t-interval over 3 seeds of a
#: rate near 0 would otherwise reach below 0). Paired differences are not clipped.
BOUNDED = {"success_rate": (0.0, 1.0), "arm_idle_fraction": (0.0, 1.0)}


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def _get(d: Mapping[str, Any], path: str) -> Any:
    for key in path.split("."):
        if not isinstance(d, Mapping) or key not in d:
            raise KeyError(path)
        d = d[key]
    return d


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def run_metrics(eval_metrics: Mapping[str, Any], layout: GroupLayout) -> dict[str, float]:
    """The headline numbers of one run (NaN where a metric is undefined); groups found by role."""
    groups = eval_metrics["offline"]["groups"]
    arms, base = layout.names_with_role("arm"), layout.names_with_role("base_velocity")
    out = {
        "arm_skill": float(np.mean([_num(groups[g]["skill"]) for g in arms])),
        # ρ = 1 moves as far as the data; below 1 is stagnation, above 1 overshoot: judge |ρ − 1|
        "arm_motion_error": float(np.mean([abs(_num(groups[g]["motion_ratio"]) - 1.0) for g in arms])),
        "base_skill": float(np.mean([_num(groups[g]["skill"]) for g in base])),
    }
    closed = eval_metrics.get("closed_loop")
    out["success_rate"] = _num(closed["policy"]["success_rate"]) if closed else float("nan")
    out["arm_idle_fraction"] = _num(closed["policy"]["arm_idle_fraction"]) if closed else float("nan")
    return out


def t_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and Student-t interval at CI_LEVEL (NaN-free values only; half-width NaN for one value)."""
    from scipy.stats import t

    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "n": 1}
    half = float(t.ppf(0.5 + CI_LEVEL / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(x)}


def clip_interval(interval: Mapping[str, float], metric: str) -> dict[str, float]:
    """``interval`` with its bounds clipped to the metric's range (``BOUNDED``), if it has one."""
    out = dict(interval)
    if metric in BOUNDED:
        low, high = BOUNDED[metric]
        for key in ("lo", "hi"):
            if math.isfinite(out[key]):
                out[key] = min(max(out[key], low), high)
    return out


#: paired differences whose whole interval lies within this of zero are float noise, not effects
NOISE = 1e-4


def verdict(diff: Mapping[str, float], higher_is_better: bool) -> str:
    if diff["n"] < 2 or not math.isfinite(diff["lo"]):
        return "undetermined"
    if max(abs(diff["lo"]), abs(diff["hi"])) < NOISE:
        return "identical within numerical noise"
    if diff["lo"] > 0:
        return "better" if higher_is_better else "worse"
    if diff["hi"] < 0:
        return "worse" if higher_is_better else "better"
    return "no detectable difference"


#: z quantiles of a two-sided 5 % test and of 80 % power
Z_ALPHA, Z_POWER = 1.959963984540054, 0.8416212335729143


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _quantiles(df: int | None) -> tuple[float, float]:
    """(two-sided 5 % critical value, 80 % power quantile): normal, or Student-t on ``df`` degrees."""
    if df is None:
        return Z_ALPHA, Z_POWER
    from scipy.stats import t

    return float(t.ppf(0.5 + CI_LEVEL / 2, df)), float(t.ppf(0.8, df))


def min_detectable_difference(p: float, n: int, dispersion: float = 1.0, df: int | None = None) -> float:
    """Smallest difference of two success rates, each over ``n`` rollouts, that a two-sided 5 % test
    detects with 80 % power when the reference succeeds at rate ``p`` (normal approximation; p is
    kept inside [0.05, 0.95] so that a perfect or null reference does not claim infinite power).

    ``dispersion`` (φ, ``overdispersion``) scales the binomial variance for rollouts that are not
    independent (one policy per seed); with its ``df`` the quantiles are Student-t's."""
    if n <= 0 or (df is not None and df < 1):
        return float("nan")
    p = min(max(p, 0.05), 0.95)
    z_alpha, z_power = _quantiles(df)
    return (z_alpha + z_power) * math.sqrt(dispersion * 2 * p * (1 - p) / n)


def overdispersion(cells: Sequence[Sequence[tuple[int, int]]]) -> dict[str, Any]:
    """How much more success varies between seeds than independent rollouts would let it.

    ``cells``: per variant (or variant and task), each seed's (successes, rollouts). The rollouts
    of one seed share one trained policy, so they are not independent draws: seeds differ by more
    than binomial noise. φ is Pearson's χ² of the seeds' successes about their cell's pooled rate,
    over its degrees of freedom (Σ seeds − 1), pooled over the cells (quasi-binomial; cells at 0 or
    100 % carry no information on it and are left out). ``dispersion`` = max(1, φ) multiplies every
    binomial variance of a pooled rate, so tests and the smallest detectable difference account for
    the seeds; ``df`` goes with it (None when no cell has two seeds and a rate inside (0, 1)).
    """
    chi2, df = 0.0, 0
    for cell in cells:
        k, n = sum(c[0] for c in cell), sum(c[1] for c in cell)
        if len(cell) < 2 or n == 0 or k in (0, n):
            continue
        p = k / n
        chi2 += sum((ki - ni * p) ** 2 / (ni * p * (1 - p)) for ki, ni in cell)
        df += len(cell) - 1
    phi = chi2 / df if df else float("nan")
    return {"phi": phi, "dispersion": max(1.0, phi) if df else 1.0, "df": df or None}


def pooled_success(closed: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per variant: successes and rollouts over all seeds, the rate, its Wilson interval, outcomes, the
    median closest approach of its wrong-place failures over all seeds (m; None without any), and, when
    the env names each scene's kind (``by_task``: the embedded task's ``arm_heavy``/``base_heavy``),
    the same success per kind, pooled over seeds (``by_task``; empty without)."""
    from balanced_pi0.evaluate.closed_loop import OUTCOMES, median_closest, wilson_interval

    out = {}
    for v, runs in closed.items():
        k = sum(r["successes"] for r in runs.values())
        n = sum(r["episodes"] for r in runs.values())
        lo, hi = wilson_interval(k, n)
        outcomes = {o: sum((r.get("outcomes") or {}).get(o, 0) for r in runs.values()) for o in OUTCOMES}
        out[v] = {
            "successes": k,
            "rollouts": n,
            "rate": k / n if n else float("nan"),
            "lo": lo,
            "hi": hi,
            "outcomes": outcomes,
            "wrong_place_closest_m": median_closest(
                [e for r in runs.values() for e in r.get("per_seed", [])]
            ),
            "by_task": {t: _pool(rates) for t, rates in _seed_rates_by_task(runs).items()},
        }
    return out


def summarize(
    per_run: Mapping[str, Mapping[int, Mapping[str, float]]],
    questions: Mapping[str, Sequence[str]],
    pooled: Mapping[str, Mapping[str, Any]] | None = None,
    dispersion: Mapping[str, Any] | None = None,
    scene_dispersion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``per_run[variant][seed][metric]`` → per-variant intervals and paired comparisons; pooled
    success is tested with the seeds' ``dispersion`` (``overdispersion``; none: independent rollouts),
    and, where both variants report success per scene kind (``pooled_success``'s ``by_task``), so is
    each kind's (metric ``pooled_success_by_scene``, its kind in ``scene``), with ``scene_dispersion``
    (the seeds' overdispersion over cells of one variant and one kind)."""
    variants = {
        v: {m: clip_interval(t_interval([runs[s][m] for s in sorted(runs)]), m) for m, _, _ in METRICS}
        for v, runs in per_run.items()
    }
    comparisons = []
    for question, names in questions.items():
        ref = names[0]
        for v in names[1:]:
            seeds = sorted(set(per_run[ref]) & set(per_run[v]))
            for m, _, higher in METRICS:
                diff = t_interval([per_run[v][s][m] - per_run[ref][s][m] for s in seeds])
                comparisons.append(
                    {
                        "question": question,
                        "variant": v,
                        "reference": ref,
                        "metric": m,
                        "diff": diff,
                        "verdict": verdict(diff, higher),
                    }
                )
            if pooled and ref in pooled and v in pooled:
                a, b = pooled[ref], pooled[v]
                comparisons.append(
                    {
                        "question": question,
                        "variant": v,
                        "reference": ref,
                        "metric": "pooled_success",
                        "diff": {"mean": b["rate"] - a["rate"], "n": min(a["rollouts"], b["rollouts"])},
                        **pooled_test(a, b, dispersion),
                    }
                )
                for scene in [t for t in a.get("by_task", {}) if t in b.get("by_task", {})]:
                    at, bt = a["by_task"][scene], b["by_task"][scene]
                    comparisons.append(
                        {
                            "question": question,
                            "variant": v,
                            "reference": ref,
                            "metric": "pooled_success_by_scene",
                            "scene": scene,
                            "diff": {
                                "mean": bt["rate"] - at["rate"],
                                "n": min(at["rollouts"], bt["rollouts"]),
                            },
                            **pooled_test(at, bt, scene_dispersion),
                        }
                    )
    return {
        "variants": variants,
        "comparisons": comparisons,
        "pooled_success": dict(pooled or {}),
        "dispersion": dict(dispersion) if dispersion else None,
        "scene_dispersion": dict(scene_dispersion) if scene_dispersion else None,
    }


def pooled_verdict(
    ref: Mapping[str, Any], var: Mapping[str, Any], dispersion: float = 1.0, df: int | None = None
) -> str:
    """Two-proportion test (pooled rollouts, two-sided 5 %) of the variant against the reference;
    the variance is scaled by ``dispersion`` and judged on Student-t's ``df`` (``overdispersion``)."""
    n1, n2 = ref["rollouts"], var["rollouts"]
    if not n1 or not n2 or (df is not None and df < 1):
        return "undetermined"
    p = (ref["successes"] + var["successes"]) / (n1 + n2)
    se = math.sqrt(dispersion * p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return "no detectable difference"
    z = (var["rate"] - ref["rate"]) / se
    if abs(z) < _quantiles(df)[0]:
        return "no detectable difference"
    return "better" if z > 0 else "worse"


def pooled_test(
    ref: Mapping[str, Any], var: Mapping[str, Any], dispersion: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The pooled-success comparison of ``var`` against ``ref`` (``pooled_success`` entries): its
    verdict and smallest detectable difference under the seeds' ``dispersion`` (``overdispersion``;
    None: independent rollouts), and what the same rollouts would resolve if each were independent."""
    phi, df = (dispersion["dispersion"], dispersion["df"]) if dispersion else (1.0, None)
    n = min(ref["rollouts"], var["rollouts"])
    return {
        "min_detectable_difference": min_detectable_difference(ref["rate"], n, phi, df),
        "min_detectable_if_independent": min_detectable_difference(ref["rate"], n),
        "verdict": pooled_verdict(ref, var, phi, df),
    }


#: the success difference the experiment is meant to resolve; the paper says how many seeds that takes
TARGET_DIFFERENCE = 0.15


def seeds_needed(
    p: float, rollouts: int, dispersion: Mapping[str, Any], target: float = TARGET_DIFFERENCE
) -> int | None:
    """Seeds per variant (of ``rollouts`` each) at which the smallest detectable difference at the
    reference's rate ``p`` reaches ``target``, with the measured dispersion and its df (None: never
    within 1000 seeds, or no dispersion estimate)."""
    if dispersion.get("df") is None:
        return None
    for k in range(1, 1001):
        if min_detectable_difference(p, k * rollouts, dispersion["dispersion"], dispersion["df"]) <= target:
            return k
    return None


def seed_cells(closed: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[list[tuple[int, int]]]:
    """``overdispersion``'s cells from closed-loop summaries: per variant, each seed's counts."""
    return [[(r["successes"], r["episodes"]) for _, r in sorted(runs.items())] for runs in closed.values()]


def scene_cells(closed: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[list[tuple[int, int]]]:
    """``overdispersion``'s cells per variant and scene kind (``by_task`` of each run's summary)."""
    return [
        [(x["successes"], x["rollouts"]) for x in rates]
        for runs in closed.values()
        for rates in _seed_rates_by_task(runs).values()
    ]


def _seed_rates_by_task(runs: Mapping[int, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task (scene kind) of one variant's runs, in order of first appearance: the rate of each
    seed that rolled it out (``_task_rates``), seeds in order. Empty when no run names tasks."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, r in sorted(runs.items()):
        for t, rate in _task_rates(r.get("by_task", {})).items():
            out.setdefault(t, []).append(rate)
    return out


def finding_text(c: Mapping[str, Any]) -> str:
    d = c["diff"]
    if c["metric"] in ("pooled_success", "pooled_success_by_scene"):
        where = f" on {c['scene']} scenes" if c["metric"] == "pooled_success_by_scene" else ""
        return (
            f"{c['variant']} vs {c['reference']}, closed-loop success{where} pooled over seeds: "
            f"{signed(d['mean'])} over {d['n']} rollouts each — {c['verdict']} (smallest detectable "
            f"difference {c['min_detectable_difference']:.3f})."
        )
    label = dict((k, lab) for k, lab, _ in METRICS)[c["metric"]]
    if c["verdict"] == "undetermined":
        return f"{c['variant']} vs {c['reference']}, {label}: too few seeds to tell."
    return (
        f"{c['variant']} vs {c['reference']}, {label}: {signed(d['mean'])} "
        f"(95 % CI {signed(d['lo'])} to {signed(d['hi'])}, {d['n']} seeds) — {c['verdict']}."
    )


def signed(x: float) -> str:
    """``+0.123`` / ``−0.123`` (a true minus sign, as in the paper's tables)."""
    return f"{x:+.3f}".replace("-", "−")


def _json_clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_clean(v) for v in x]
    if isinstance(x, float | np.floating):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    return json.loads(path.read_text())


def collect(params: _config.Params, runs_dir: Path):
    """Per variant and seed: the headline metrics, and the closed-loop policy summary (if any)."""
    per_run: dict[str, dict[int, dict[str, float]]] = {}
    closed: dict[str, dict[int, dict[str, Any]]] = {}
    layout = params.layout.build()  # shared by every run (a variant may not override it)
    for variant in params.ablation.variants:
        for seed in params.ablation.seeds:
            path = runs_dir / run_name(variant, seed) / "eval" / "metrics.json"
            doc = _read_json(path)
            per_run.setdefault(variant, {})[seed] = run_metrics(doc, layout)
            if doc.get("closed_loop"):
                closed.setdefault(variant, {})[seed] = doc["closed_loop"]["policy"]
    return per_run, closed


def loss_curves(
    runs_dir: Path, variant: str, seeds: Sequence[int], key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the seed-mean of one dvclive metric, e.g. ``group_loss/left_arm``."""
    curves = []
    steps = None
    for s in seeds:
        tsv = runs_dir / run_name(variant, s) / "live" / "plots" / "metrics" / f"{key}.tsv"
        if not tsv.exists():
            raise InputError(f"{tsv}: training log not found")
        rows = [ln.split("\t") for ln in tsv.read_text().splitlines()]
        header, rows = rows[0], rows[1:]
        si, vi = header.index("step"), header.index(key.split("/")[-1])
        steps = np.array([int(r[si]) for r in rows])
        curves.append([float(r[vi]) for r in rows])
    return steps, np.mean(np.asarray(curves), axis=0)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
def ablation_figure(summary: Mapping[str, Any], questions: Mapping[str, Sequence[str]], path: Path) -> None:
    """One panel per headline metric: every variant's seed mean with its 95 % interval."""
    order = list(dict.fromkeys(v for names in questions.values() for v in names))
    shown = [m for m in METRICS if m[0] in ("success_rate", "arm_skill", "arm_motion_error", "base_skill")]
    fig = io.new_figure(3.0 * len(shown), 3.2)
    axes = fig.subplots(1, len(shown), sharey=False)
    y = np.arange(len(order))
    for ax, (key, label, _) in zip(np.atleast_1d(axes), shown, strict=True):
        stats = [summary["variants"][v][key] for v in order]
        mean = np.array([s["mean"] for s in stats])
        lo = np.array([s["lo"] for s in stats])
        hi = np.array([s["hi"] for s in stats])
        err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
        ax.errorbar(mean, y, xerr=err, fmt="o", ms=4, capsize=2, color="tab:blue")
        ax.axvline(mean[0], color="0.6", lw=0.8, ls="--")
        ax.set_yticks(y, order if ax is np.atleast_1d(axes)[0] else [""] * len(order), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    io.save_png(fig, path)


def loss_figure(
    runs_dir: Path, variants: Sequence[str], seeds: Sequence[int], groups: Sequence[str], path: Path
):
    """Per-group training error (same normalisation as the loss, unweighted) of each variant."""
    fig = io.new_figure(3.0 * len(variants), 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(variants), sharey=True))
    for ax, v in zip(axes, variants, strict=True):
        for g in groups:
            steps, curve = loss_curves(runs_dir, v, seeds, f"group_loss/{g}")
            ax.plot(steps, curve, label=g, lw=1)
        ax.set(title=v, xlabel="step", yscale="log")
        ax.title.set_fontsize(8)
    axes[0].set_ylabel("per-group error")
    axes[0].legend(fontsize=6)
    io.save_png(fig, path)


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------
def _setup(params: _config.Params, split: Path, arm_heavy: Path, analyze: Path) -> dict[str, Any]:
    from balanced_pi0.loss import LossSpec

    sp = io.read_split(split)
    heavy = _read_json(arm_heavy)
    effective = {}
    for v, overrides in params.ablation.variants.items():
        run = _config.for_run(params, v, params.ablation.seeds[0])
        if any(k.startswith("train.loss") for k in overrides) or v == params.report.reference:
            effective[v] = LossSpec.from_config(run).effective_group_weights()
    from balanced_pi0 import flow as _flow
    from balanced_pi0 import loss as _loss

    lc = params.train.loss
    layout = params.layout.build()
    return {
        # groups as [name, start, stop] rows: JSON objects lose their order when keys are sorted
        "layout": {
            "real_action_dim": layout.real_action_dim,
            "model_action_dim": layout.model_action_dim,
            "groups": [[g.name, g.start, g.stop] for g in layout.groups],
        },
        "ci_percent": round(100 * CI_LEVEL),
        "power": {"alpha": 2 * (1 - _normal_cdf(Z_ALPHA)), "power": _normal_cdf(Z_POWER)},
        "method": {
            "time_alpha": _flow.TIME_ALPHA,
            "time_beta": _flow.TIME_BETA,
            "time_min": _flow.TIME_MIN,
            "time_scale": round(1.0 - _flow.TIME_MIN, 6),
            "delta_alpha": lc.delta_alpha,
            "delta_beta": lc.delta_beta,
            "delta_cap": lc.delta_cap,
            "delta_clip": list(_loss.DELTA_CLIP),
        },
        "episodes": len(sp["train"]) + len(sp["val"]),
        "train_episodes": len(sp["train"]),
        "val_episodes": len(sp["val"]),
        "arm_heavy_episodes": len(heavy["episodes"]),
        "seeds": list(params.ablation.seeds),
        "variants": {v: {k: str(x) for k, x in o.items()} for v, o in params.ablation.variants.items()},
        "steps": params.train.total_steps,
        "batch_size": params.train.batch_size,
        "action_horizon": params.model.action_horizon,
        "model_size": params.model.size,
        "rollouts": params.eval.rollouts,
        "max_steps": params.eval.max_steps,
        "image_resolution": params.model.image_resolution,
        "peak_lr": params.train.optimizer.peak_lr,
        "n_action_steps": params.eval.n_action_steps,
        "arm_reach_displacement": ARM_REACH_DISPLACEMENT,
        "effective_group_weights": effective,
        "analyze": _read_json(analyze),
    }


def run(
    params: _config.Params,
    runs: str = "runs",
    split: str = "data/split.json",
    arm_heavy: str = "data/arm_heavy.json",
    analyze: str = "results/analyze/metrics.json",
    paper: str = "paper/paper.typ",
    out: str = "paper/paper.pdf",
    metaworld: str = "experiments/metaworld/results/summary.json",
) -> None:
    """Write ``paper/generated/`` (results.json, figures) and compile the paper to ``out``.

    ``metaworld`` (``bpi0 metaworld-summary``'s output) fills the Meta-World appendix; when it is
    absent, ``results.json`` says ``"metaworld": null`` and the appendix says it was not run."""
    runs_dir, paper_src = Path(runs), Path(paper)
    questions = params.report.questions
    missing = sorted({v for names in questions.values() for v in names} - set(params.ablation.variants))
    if missing:
        raise InputError(f"report.questions: variants {missing} are not in ablation.variants")
    gen = paper_src.parent / "generated"
    per_run, closed = collect(params, runs_dir)
    pooled = pooled_success(closed)
    dispersion = overdispersion(seed_cells(closed)) if closed else None
    if dispersion and params.report.reference in pooled:
        dispersion["seeds_for_target"] = seeds_needed(
            pooled[params.report.reference]["rate"], params.eval.rollouts, dispersion
        )
        dispersion["target_difference"] = TARGET_DIFFERENCE
    scene_cells_ = scene_cells(closed)
    scene_dispersion = overdispersion(scene_cells_) if scene_cells_ else None
    summary = summarize(per_run, questions, pooled, dispersion, scene_dispersion)
    results = {
        "setup": _setup(params, Path(split), Path(arm_heavy), Path(analyze)),
        "reference": params.report.reference,
        "questions": {q: list(v) for q, v in questions.items()},
        "metrics": [{"key": k, "label": lab, "higher_is_better": h} for k, lab, h in METRICS],
        "per_run": per_run,
        **summary,
        "findings": [{**c, "text": finding_text(c)} for c in summary["comparisons"]],
        "closed_loop_expert": _expert_summary(params, runs_dir),
        "metaworld": _read_json(Path(metaworld)) if Path(metaworld).exists() else None,
    }
    io.write_json(gen / "results.json", _json_clean(results))
    ablation_figure(summary, questions, gen / "ablation.png")
    ref = params.report.reference
    loss_figure(
        runs_dir,
        [ref, *params.report.loss_curves],
        params.ablation.seeds,
        params.layout.build().group_names,
        gen / "group_loss.png",
    )
    compile_paper(paper_src, Path(out))


def _expert_summary(params: _config.Params, runs_dir: Path) -> dict[str, Any] | None:
    ref = params.report.reference
    path = runs_dir / run_name(ref, params.ablation.seeds[0]) / "eval" / "metrics.json"
    closed = _read_json(path).get("closed_loop")
    if not closed:
        return None
    e = closed["expert"]
    keys = ("episodes", "successes", "success_rate", "success_ci95", "arm_idle_fraction", "outcomes")
    return {k: e.get(k) for k in keys}


def compile_paper(source: Path, out: Path) -> None:
    """Typst from PyPI; the document sets ``date: none`` so the PDF bytes repeat."""
    import typst

    with io.atomic_path(out) as tmp:
        typst.compile(str(source), output=str(tmp), root=str(Path.cwd()))
    if not out.exists():
        raise InputError(f"{out}: typst wrote nothing")


# --------------------------------------------------------------------------------------
# Meta-World (experiments/metaworld): per-task success, the expert, and the padding comparison
# --------------------------------------------------------------------------------------
def _task_rates(by_task: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``by_task`` of a closed-loop summary → per task: successes, rollouts, rate, Wilson interval."""
    from balanced_pi0.evaluate.closed_loop import wilson_interval

    out = {}
    for task, s in by_task.items():
        k, n = int(s["successes"]), int(s["episodes"])
        lo, hi = wilson_interval(k, n)
        out[task] = {"successes": k, "rollouts": n, "rate": k / n if n else float("nan"), "lo": lo, "hi": hi}
    return out


def _pool(rates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from balanced_pi0.evaluate.closed_loop import wilson_interval

    k = sum(r["successes"] for r in rates)
    n = sum(r["rollouts"] for r in rates)
    lo, hi = wilson_interval(k, n)
    return {"successes": k, "rollouts": n, "rate": k / n if n else float("nan"), "lo": lo, "hi": hi}


def metaworld_tables(
    per_run: Mapping[str, Mapping[int, Mapping[str, Any]]],
    expert: Mapping[str, Any],
    reference: str,
    tasks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per variant and task: success pooled over seeds (Wilson) and the seed mean (t interval); the
    expert on the same scenes; each variant against ``reference`` (pooled two-proportion test per task
    and overall, and the paired seed difference of the overall rate).

    ``per_run[variant][seed]`` is a run's ``closed_loop.policy`` summary (with ``by_task``)."""
    tasks = list(expert.get("by_task") or {}) if tasks is None else list(tasks)
    if sorted(tasks) != sorted(expert.get("by_task") or {}):
        raise InputError(
            f"metaworld: the expert rolled out tasks {list(expert.get('by_task') or {})}, not {tasks}"
        )
    variants: dict[str, Any] = {}
    for v, runs in per_run.items():
        seeds = sorted(runs)
        rates = {s: _task_rates(runs[s]["by_task"]) for s in seeds}
        for s in seeds:
            if sorted(rates[s]) != sorted(tasks):
                raise InputError(
                    f"metaworld: run {run_name(v, s)} rolled out tasks {list(rates[s])}, the expert {tasks}"
                )
        by_task = {}
        for t in tasks:
            by_task[t] = {
                "pooled": _pool([rates[s][t] for s in seeds]),
                "seed_mean": clip_interval(t_interval([rates[s][t]["rate"] for s in seeds]), "success_rate"),
                "per_seed": {str(s): rates[s][t] for s in seeds},
            }
        overall = {s: _pool(list(rates[s].values())) for s in seeds}
        variants[v] = {
            "by_task": by_task,
            "overall": {
                "pooled": _pool(list(overall.values())),
                "seed_mean": clip_interval(t_interval([overall[s]["rate"] for s in seeds]), "success_rate"),
                "per_seed": {str(s): overall[s] for s in seeds},
            },
        }
    # Seeds of one variant differ by more than binomial noise: every pooled test carries the
    # overdispersion measured over all (variant, task) cells, as in the main experiment.
    dispersion = overdispersion(
        [
            [(r["successes"], r["rollouts"]) for _, r in sorted(var["by_task"][t]["per_seed"].items())]
            for var in variants.values()
            for t in tasks
        ]
    )
    comparisons = []
    if reference in variants:
        ref = variants[reference]
        for v, var in variants.items():
            if v == reference:
                continue
            for t in [*tasks, None]:
                a = ref["by_task"][t]["pooled"] if t else ref["overall"]["pooled"]
                b = var["by_task"][t]["pooled"] if t else var["overall"]["pooled"]
                n = min(a["rollouts"], b["rollouts"])
                comparisons.append(
                    {
                        "variant": v,
                        "reference": reference,
                        "task": t or "all",
                        "diff": b["rate"] - a["rate"],
                        "rollouts": n,
                        **pooled_test(a, b, dispersion),
                    }
                )
            seeds = sorted(set(per_run[reference]) & set(per_run[v]))
            paired = t_interval(
                [
                    var["overall"]["per_seed"][str(s)]["rate"] - ref["overall"]["per_seed"][str(s)]["rate"]
                    for s in seeds
                ]
            )
            comparisons.append(
                {
                    "variant": v,
                    "reference": reference,
                    "task": "all (paired seeds)",
                    "diff_interval": paired,
                    "verdict": verdict(paired, True),
                }
            )
    return {
        "tasks": tasks,
        "expert": {
            "by_task": {t: _task_rates(expert["by_task"])[t] for t in tasks},
            "overall": _pool(list(_task_rates(expert["by_task"]).values())),
        },
        "variants": variants,
        "comparisons": comparisons,
        "dispersion": dispersion,
    }


def _pct(r: Mapping[str, Any]) -> str:
    """``83 % (25/30, 66–93)``: a pooled rate with its counts and Wilson interval."""
    if not r["rollouts"]:
        return "–"
    return (
        f"{100 * r['rate']:.0f} % ({r['successes']}/{r['rollouts']}, {100 * r['lo']:.0f}–{100 * r['hi']:.0f})"
    )


def metaworld_markdown(summary: Mapping[str, Any]) -> str:
    """The Meta-World table (README, ``experiments/metaworld/results/summary.md``) from ``summary``."""
    tasks, variants = summary["tasks"], summary["variants"]
    setup = summary["setup"]
    head = ["policy", *tasks, "all tasks"]
    rows = [
        [f"scripted expert ({setup['rollouts_per_task']} scenes per task)"]
        + [_pct(summary["expert"]["by_task"][t]) for t in tasks]
        + [_pct(summary["expert"]["overall"])]
    ]
    for v, res in variants.items():
        label = f"tiny pi0, `{v}` ({setup['variants'].get(v, '')}; {len(setup['seeds'])} seeds pooled)"
        rows.append(
            [label] + [_pct(res["by_task"][t]["pooled"]) for t in tasks] + [_pct(res["overall"]["pooled"])]
        )
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "Success in % (successes/rollouts, Wilson 95 % interval), pooled over seeds; every run rolls out the "
        "same held-out scenes as the expert.",
    ]
    comps = [c for c in summary["comparisons"] if "min_detectable_difference" in c]
    if comps:
        lines += [
            "",
            "| comparison | task | difference | smallest detectable | verdict |",
            "|---|---|---|---|---|",
        ]
        for c in comps:
            lines.append(
                f"| `{c['variant']}` − `{c['reference']}` | {c['task']} | {signed(c['diff'])} | "
                f"{c['min_detectable_difference']:.3f} | {c['verdict']} |"
            )
        d = summary.get("dispersion") or {}
        if d.get("df"):
            lines += [
                "",
                f"Pooled tests scale the binomial variance by the seeds' overdispersion φ = {d['phi']:.2f} "
                f"(Pearson χ²/df over every variant's tasks, {d['df']} df; used as max(1, φ)), because the "
                "rollouts of one seed share one policy.",
            ]
    return "\n".join(lines) + "\n"


def metaworld_summary(
    params: _config.Params,
    runs: str = "runs",
    expert: str = "results/expert/metrics.json",
    out: str = "results/summary.json",
) -> None:
    """``bpi0 metaworld-summary``: every run of ``ablation`` (variants × seeds) and the expert, per task,
    into ``out`` (JSON, read by the paper's appendix) and the markdown table beside it (``.md``)."""
    kind, _, arg = params.dataset.source.partition(":")
    if kind != "metaworld":
        raise InputError(
            f"metaworld-summary: dataset.source is {params.dataset.source!r}, not metaworld:<tasks>"
        )
    per_run: dict[str, dict[int, Any]] = {}
    for v in params.ablation.variants:
        for s in params.ablation.seeds:
            doc = _read_json(Path(runs) / run_name(v, s) / "eval" / "metrics.json")
            closed = doc.get("closed_loop")
            if not closed or "by_task" not in closed["policy"]:
                raise InputError(
                    f"{runs}/{run_name(v, s)}: no per-task closed-loop results (eval.rollouts = 0?)"
                )
            per_run.setdefault(v, {})[s] = closed["policy"]
    expert_doc = _read_json(Path(expert))
    if "by_task" not in expert_doc:
        raise InputError(f"{expert}: no per-task results (rerun `bpi0 expert`)")
    tasks = [t.strip() for t in arg.split(",") if t.strip()]
    tables = metaworld_tables(per_run, expert_doc, params.report.reference, tasks)
    mw = params.dataset.metaworld
    summary = {
        "setup": {
            "tasks": tasks,
            "difficulty": metaworld_difficulty(tasks),
            "episodes": mw.episodes,
            "episodes_per_task": mw.episodes // len(tasks),
            "val_fraction": params.dataset.split.val_fraction,
            "cameras": list(params.dataset.cameras),
            "image_resolution": params.model.image_resolution,
            "model_size": params.model.size,
            "steps": params.train.total_steps,
            "batch_size": params.train.batch_size,
            "action_horizon": params.model.action_horizon,
            "n_action_steps": params.eval.n_action_steps,
            "rollouts": params.eval.rollouts,
            "rollouts_per_task": params.eval.rollouts // len(tasks),
            "max_steps": params.eval.max_steps,
            "seeds": list(params.ablation.seeds),
            "variants": {
                v: ", ".join(f"{k}: {x}" for k, x in o.items()) or "the params as they are"
                for v, o in params.ablation.variants.items()
            },
            "reference": params.report.reference,
        },
        **tables,
        "published": PUBLISHED_METAWORLD,
    }
    summary = _json_clean(summary)
    io.write_json(Path(out), summary)
    io.write_text(Path(out).with_suffix(".md"), metaworld_markdown(summary))


#: Published Meta-World MT50 success (%) per difficulty group, quoted (not measured here) from the SmolVLA
#: paper's simulation table (Shukor et al. 2025, arXiv:2506.01844), as transcribed alike by several
#: secondary summaries of it. Setup there: one policy for all 50 tasks, trained on LeRobot's MT50
#: demonstrations; π0 is PaliGemma-3B based (robot-pretrained, or initialised from the VLM only), SmolVLA
#: starts from a pretrained SmolVLM-2; images at the pretrained encoders' sizes (LeRobot's configs: 224 px
#: for π0, 512 px for SmolVLA).
PUBLISHED_METAWORLD: dict[str, Any] = {
    "source": "Shukor et al., SmolVLA (arXiv:2506.01844), simulation results table, Meta-World MT50",
    "groups": ["easy", "medium", "hard", "very_hard", "average"],
    "rows": [
        {
            "policy": "π0 (3.5B, PaliGemma init, no robot pretraining)",
            "success": [80.4, 40.9, 36.7, 44.0, 50.5],
        },
        {"policy": "π0 (3.5B, robot-pretrained)", "success": [71.8, 48.2, 41.7, 30.0, 47.9]},
        {"policy": "SmolVLA (0.45B)", "success": [82.5, 41.8, 45.0, 60.0, 57.3]},
        {"policy": "SmolVLA (2.25B)", "success": [87.14, 51.82, 70.0, 64.0, 68.24]},
    ],
}


def metaworld_difficulty(tasks: Sequence[str]) -> dict[str, str | None]:
    """Each task's Meta-World difficulty group (LeRobot's ``DIFFICULTY_TO_TASKS``; None if unknown)."""
    from importlib.util import find_spec

    spec = find_spec("lerobot")
    if spec is None or not spec.submodule_search_locations:
        return dict.fromkeys(tasks)
    path = Path(next(iter(spec.submodule_search_locations))) / "envs" / "metaworld_config.json"
    groups = json.loads(path.read_text()).get("DIFFICULTY_TO_TASKS", {}) if path.exists() else {}
    return {t: next((g for g, names in groups.items() if t in names), None) for t in tasks}
