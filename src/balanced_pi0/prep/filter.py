"""``bpi0 filter``: which training episodes are arm-heavy.

Each *whole* training episode is scored (never fixed-size chunks, which split a
reach from its approach): arm motion (summed joint path of the arm groups, rad),
base motion (distance travelled, m; see ``prep.motion``) and their ratio, whose
denominator is floored at ``min_base_motion`` so an episode with a still base
stays finite. An episode is arm-heavy when ``ratio ≥ ratio_threshold`` and
``arm_motion ≥ min_arm_motion`` (the second keeps idle episodes out: a still base
and still arms give a large ratio of nothing).

Writes ``arm_heavy.json`` (the arm-heavy list, the criteria and every training
episode's scores; training's curriculum reads it with ``split.json``), and in the
report folder ``report.md`` and ``histograms.png``. When the dataset records how
each episode was generated (the embedded task's ``arm_heavy`` placement, in the
writer's episode sidecar), the selection is compared with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from balanced_pi0 import io
from balanced_pi0.data.writer import EPISODES_SIDECAR
from balanced_pi0.errors import InputError
from balanced_pi0.groups import GroupLayout
from balanced_pi0.prep.motion import dataset_motion


def score_episodes(data, layout: GroupLayout, min_base_motion: float) -> list[dict]:
    """One score record per episode of ``data``, in episode order."""
    return [
        {
            "episode": m.episode,
            "num_frames": m.num_frames,
            "arm_motion": m.arm_motion,
            "base_distance": m.base_distance,
            "base_yaw": m.base_yaw,
            "ratio": m.arm_base_ratio(min_base_motion),
        }
        for m in dataset_motion(data, layout)
    ]


def select_arm_heavy(scores: list[dict], ratio_threshold: float, min_arm_motion: float) -> list[int]:
    """Episode ids meeting both criteria; raises if none does, saying how far the data is."""
    chosen = [
        s["episode"] for s in scores if s["ratio"] >= ratio_threshold and s["arm_motion"] >= min_arm_motion
    ]
    if not chosen:
        max_ratio = max(s["ratio"] for s in scores)
        above = [s["arm_motion"] for s in scores if s["ratio"] >= ratio_threshold]
        detail = (
            f"; the {len(above)} episode(s) at or above it move their arms at most {max(above):.3g} rad "
            f"< min_arm_motion {min_arm_motion:g}"
            if above
            else ""
        )
        raise InputError(
            f"no arm-heavy episode at threshold {ratio_threshold:g}: max ratio is {max_ratio:.3g}{detail} "
            f"(filter.ratio_threshold, filter.min_arm_motion)"
        )
    return chosen


def generator_labels(dataset: str | Path) -> dict[int, bool] | None:
    """``{episode: arm_heavy}`` as the sim generator placed the target, if the dataset records it."""
    path = Path(dataset) / EPISODES_SIDECAR
    if not path.exists():
        return None
    facts = json.loads(path.read_text())
    if not all("arm_heavy" in f for f in facts):
        return None
    return {int(f["episode_index"]): bool(f["arm_heavy"]) for f in facts}


def agreement(chosen: list[int], scores: list[dict], labels: dict[int, bool]) -> dict[str, int]:
    """Counts of training episodes by (filter says arm-heavy, generator placed it within reach)."""
    chosen_set, out = set(chosen), {"both": 0, "filter_only": 0, "generator_only": 0, "neither": 0}
    for s in scores:
        ours, theirs = s["episode"] in chosen_set, labels[s["episode"]]
        key = (
            "both"
            if ours and theirs
            else "filter_only"
            if ours
            else "generator_only"
            if theirs
            else "neither"
        )
        out[key] += 1
    return out


def filter_document(scores: list[dict], chosen: list[int], cfg) -> dict:
    chosen_set = set(chosen)
    frames = sum(s["num_frames"] for s in scores)
    return {
        "episodes": chosen,
        "num_arm_heavy": len(chosen),
        "num_train_episodes": len(scores),
        "frame_fraction": sum(s["num_frames"] for s in scores if s["episode"] in chosen_set) / frames,
        "criteria": {
            "ratio_threshold": cfg.ratio_threshold,
            "min_arm_motion": cfg.min_arm_motion,
            "min_base_motion": cfg.min_base_motion,
            "rule": "arm-heavy when arm_motion / max(base_distance, min_base_motion) >= ratio_threshold "
            "and arm_motion >= min_arm_motion; whole training episodes",
            "arm_motion": "sum over the arm groups of the joint-space path length Σ‖a[t+1,g] − a[t,g]‖ (rad)",
            "base_distance": "Σ‖(vx, vy)‖·dt of the base velocity commands (m); base_yaw = Σ|wz|·dt (rad)",
        },
        "scores": [{**s, "arm_heavy": s["episode"] in chosen_set} for s in scores],
    }


def histogram_figure(scores: list[dict], cfg):
    fig = io.new_figure(9.0, 3.5)
    ax_r, ax_a = fig.subplots(1, 2)
    ratio = np.array([s["ratio"] for s in scores])
    arm = np.array([s["arm_motion"] for s in scores])
    # ratios span orders of magnitude (a still base floors the denominator): log bins
    lo = min(ratio[ratio > 0].min(initial=cfg.ratio_threshold), cfg.ratio_threshold) / 2
    hi = max(ratio.max(), cfg.ratio_threshold) * 2
    ax_r.hist(np.clip(ratio, lo, None), bins=np.geomspace(lo, hi, cfg.bins + 1))
    ax_r.set_xscale("log")
    ax_r.axvline(cfg.ratio_threshold, color="k", linestyle="--", label="ratio_threshold")
    ax_r.set_xlabel("arm motion / base distance (rad/m) per episode")
    ax_r.legend(fontsize=7)
    ax_a.hist(arm, bins=cfg.bins)
    ax_a.axvline(cfg.min_arm_motion, color="k", linestyle="--", label="min_arm_motion")
    ax_a.set_xlabel("arm path length per episode (rad)")
    ax_a.legend(fontsize=7)
    for ax in (ax_r, ax_a):
        ax.set_ylabel("training episodes")
    return fig


def report_markdown(doc: dict) -> str:
    c = doc["criteria"]
    ratio = np.array([s["ratio"] for s in doc["scores"]])
    arm = np.array([s["arm_motion"] for s in doc["scores"]])
    q = lambda x: " / ".join(f"{v:.3g}" for v in np.quantile(x, [0.1, 0.5, 0.9]))  # noqa: E731
    return "\n".join(
        [
            "# Arm-heavy training episodes",
            "",
            f"Rule: {c['rule']}.",
            f"Parameters: ratio_threshold = {c['ratio_threshold']:g}, min_arm_motion = "
            f"{c['min_arm_motion']:g} rad, min_base_motion = {c['min_base_motion']:g} m.",
            "",
            f"- arm-heavy: {doc['num_arm_heavy']} of {doc['num_train_episodes']} training episodes "
            f"({doc['frame_fraction']:.1%} of the training frames)",
            f"- ratio (rad/m), 10th / 50th / 90th percentile: {q(ratio)}",
            f"- arm motion (rad), 10th / 50th / 90th percentile: {q(arm)}",
            f"- episodes: {doc['episodes']}",
            *(
                [f"- against the generator's arm-heavy placements: {doc['agreement_with_generator']}"]
                if "agreement_with_generator" in doc
                else []
            ),
            "",
            "![ratio and arm-motion histograms](histograms.png)",
            "",
        ]
    )


def run(
    params,
    dataset: str = "data/dataset",
    split: str = "data/split.json",
    out: str = "data/arm_heavy.json",
    report: str = "results/filter",
):
    """``bpi0 filter``: ``arm_heavy.json`` plus ``report.md`` and ``histograms.png`` in ``report``."""
    cfg = params.filter
    data = io.load_train(dataset, split)
    scores = score_episodes(data, params.layout.build(), cfg.min_base_motion)
    chosen = select_arm_heavy(scores, cfg.ratio_threshold, cfg.min_arm_motion)
    doc = filter_document(scores, chosen, cfg)
    labels = generator_labels(dataset)
    if labels is not None:
        doc["agreement_with_generator"] = agreement(chosen, scores, labels)
    fig = histogram_figure(scores, cfg)
    io.write_json(out, doc)
    io.write_text(Path(report) / "report.md", report_markdown(doc))
    io.save_png(fig, Path(report) / "histograms.png")
