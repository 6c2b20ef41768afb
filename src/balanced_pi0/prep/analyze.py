"""``bpi0 analyze``: how large each action group's values, per-step changes and motion are.

On the training episodes, per group of the layout, in raw units and in normalised
units (the ``standard`` norm stats' z-score: each dimension divided by its training
std, floored at ``normstats.min_std`` as ``policy_io`` does; values are also centred on the mean):

- ``values``: every action value of the group;
- ``step_change``: ``‖a[t+1,g] − a[t,g]‖`` over the steps inside episodes;
- ``motion``: per episode, joint-space path length (base: distance travelled, see
  ``prep.motion``); the base's rotation is reported beside it.

And ``activity``, the statistics that say how far a dataset resembles BEHAVIOR-1K's
R1Pro demonstrations (mostly navigation, brief and small arm motion): per group, the
share of steps in which it moves (``moving_step_share``: base, a non-zero velocity
command; joint groups, a change above ``MOVING_THRESHOLD``) and its share of the
summed per-step change in normalised units (``normalised_change_share``, what the
loss sees); per episode, arm motion against base travel (``episode_motion``).

Writes ``metrics.json`` (DVC metrics: scalar summaries), ``histograms.json`` (the
same tree holding only the histograms, for replotting), ``histograms_raw.png``,
``histograms_normalised.png`` and ``motion_scatter.png`` (per-episode arm motion
against base travel), and suggests group weights by the rule in ``WEIGHT_RULE``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from balanced_pi0 import io
from balanced_pi0.groups import Group, GroupLayout
from balanced_pi0.policy_io import std_scale
from balanced_pi0.prep.motion import EpisodeMotion, check_motion_layout, dataset_motion, step_changes
from balanced_pi0.prep.normstats import column_blocks, feature_stats

WEIGHT_RULE = (
    "m_g = mean over training steps of ||Δa_g|| / sqrt(|g|) in normalised units (per-dimension RMS "
    "step change); w_g = clip(median(m) / m_g, 1/max_weight, max_weight) with the median over the groups "
    "that move, and w_g = 1 for a group that never moves (m_g = 0: nothing to learn, no reason to "
    "reweight it); "
    "then renormalised to mean 1 over the real action dimensions, as the loss does. Groups that move "
    "little per step get larger weights, so every group's typical per-step change contributes alike."
)
UNITS = ("raw", "normalised")
#: A joint group (rad) or the base velocity command (m/s, rad/s) "moves" in a step above this.
MOVING_THRESHOLD = 1e-3


def summary(x: np.ndarray, bins: int) -> dict:
    """Moments, quantiles and a histogram of a 1-D sample."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return {"count": 0}
    counts, edges = np.histogram(x, bins=bins)
    q = np.quantile(x, [0.01, 0.5, 0.99])
    return {
        "count": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "mean_abs": float(np.abs(x).mean()),
        "min": float(x.min()),
        "q01": float(q[0]),
        "median": float(q[1]),
        "q99": float(q[2]),
        "max": float(x.max()),
        "histogram": {"edges": io.finite_floats(edges), "counts": [int(c) for c in counts]},
    }


def _episode_changes(data, action: np.ndarray, start: int, stop: int) -> np.ndarray:
    spans = zip(data.ep_start, data.ep_stop, strict=True)
    return np.concatenate([step_changes(action[s:e], start, stop) for s, e in spans])


def _motion_of(motions: list[EpisodeMotion], group: Group) -> np.ndarray:
    if group.role == "base_velocity":
        return np.array([m.base_distance for m in motions])
    return np.array([m.path_length[group.name] for m in motions])


def suggested_weights(step_rms: dict[str, float], layout: GroupLayout, max_weight: float) -> dict[str, float]:
    """Group weights by ``WEIGHT_RULE`` from each group's per-dimension RMS step change."""
    moving = [m for m in step_rms.values() if m > 0]
    target = float(np.median(moving)) if moving else 1.0
    raw = {
        g: float(np.clip(target / m, 1 / max_weight, max_weight)) if m > 0 else 1.0
        for g, m in step_rms.items()
    }
    mean_per_dim = sum(raw[g.name] * g.size for g in layout.groups) / layout.real_action_dim
    return {g: w / mean_per_dim for g, w in raw.items()}


def _group_metrics(data, layout: GroupLayout, units: dict, motions: dict, bins: int):
    """Per group and unit, summaries of values, step changes and motion; and each group's step RMS."""
    groups, step_rms = {}, {}
    for g in tqdm(layout.groups, desc="analyze groups", disable=None, leave=False):
        groups[g.name] = {}
        for u in UNITS:
            changes = _episode_changes(data, units[u], g.start, g.stop)
            groups[g.name][u] = {
                "values": summary(units[u][:, g.start : g.stop], bins),
                "step_change": summary(changes, bins),
                "motion": summary(_motion_of(motions[u], g), bins),
            }
        normalised = _episode_changes(data, units["normalised"], g.start, g.stop)
        step_rms[g.name] = float(normalised.mean() / np.sqrt(g.size)) if normalised.size else 0.0
    return groups, step_rms


def activity(data, layout: GroupLayout, normalised: np.ndarray) -> dict:
    """Per group: share of steps in which it moves, and its share of the normalised per-step change."""
    action = np.asarray(data.action, dtype=np.float64)
    moving, change = {}, {}
    for g in layout.groups:
        if g.role == "base_velocity":  # a velocity command: moving is a non-zero command
            per_step = np.abs(action[:, g.start : g.stop]).max(axis=1)
        else:
            per_step = np.concatenate(
                [
                    np.abs(np.diff(action[s:e, g.start : g.stop], axis=0)).max(axis=1)
                    for s, e in zip(data.ep_start, data.ep_stop, strict=True)
                ]
            )
        moving[g.name] = float(np.mean(per_step > MOVING_THRESHOLD)) if per_step.size else 0.0
        change[g.name] = float(_episode_changes(data, normalised, g.start, g.stop).sum())
    total = sum(change.values())
    return {
        "moving_threshold": MOVING_THRESHOLD,
        "moving_step_share": moving,
        "normalised_change_share": {g: (c / total if total > 0 else 0.0) for g, c in change.items()},
        "arm_moving_step_share": _any_moving_share(data, layout, action),
    }


def _any_moving_share(data, layout: GroupLayout, action: np.ndarray) -> float:
    """Share of steps in which any arm group moves (the arms' duty cycle)."""
    idx = np.concatenate([np.asarray(g.indices) for g in layout.with_role("arm")])
    steps = [
        np.abs(np.diff(action[s:e][:, idx], axis=0)).max(axis=1) > MOVING_THRESHOLD
        for s, e in zip(data.ep_start, data.ep_stop, strict=True)
    ]
    steps = np.concatenate(steps) if steps else np.zeros(0, bool)
    return float(steps.mean()) if steps.size else 0.0


def analyze(
    data, layout: GroupLayout, *, bins: int, max_weight: float, min_std: float, min_base_motion: float
):
    """Metrics document and per-episode motions (raw, normalised) of a training ``LowDim``."""
    check_motion_layout(layout, data.action.shape[1])
    action = np.asarray(data.action, dtype=np.float64)
    # the standard norm stats' z-score, so "normalised" means what training will see
    stats = feature_stats(column_blocks(action), bins=10_000, desc="actions")
    scale = std_scale(stats.std, min_std)
    units = {"raw": action, "normalised": (action - stats.mean) / scale}
    motions = {
        "raw": dataset_motion(data, layout, action),
        "normalised": dataset_motion(data, layout, action / scale),
    }
    groups, step_rms = _group_metrics(data, layout, units, motions, bins)
    raw = motions["raw"]
    ratio = np.array([m.arm_base_ratio(min_base_motion) for m in raw])
    metrics = {
        "episodes": len(data.episodes),
        "frames": len(action),
        "fps": float(data.fps),
        "layout": layout.to_dict(),
        "units": {
            "raw": "dataset units (joint positions in rad, base velocities in m/s and rad/s)",
            "normalised": "z-scored with the standard norm stats of the training episodes (values), "
            "divided by their std (changes, motion); std floored at normstats.min_std",
            "motion": "joint groups: summed path length Σ‖Δa_g‖; base: distance Σ‖(vx,vy)‖·dt",
        },
        "groups": groups,
        "activity": activity(data, layout, units["normalised"]),
        "episode_motion": {
            "arm_motion": summary([m.arm_motion for m in raw], bins),
            "base_distance": summary([m.base_distance for m in raw], bins),
            "base_yaw": summary([m.base_yaw for m in raw], bins),
            "arm_base_ratio": summary(ratio, bins),
            "arm_base_ratio_min_base_motion": min_base_motion,
        },
        "suggested_group_weights": {
            "rule": WEIGHT_RULE,
            "step_change_rms": step_rms,
            "weights": suggested_weights(step_rms, layout, max_weight),
        },
    }
    return metrics, motions


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------
def split_histograms(node):
    """Remove every ``histogram`` entry from the tree ``node``; return them in a tree of the same shape."""
    if not isinstance(node, dict):
        return None
    out = {"histogram": node.pop("histogram")} if "histogram" in node else {}
    for key, child in node.items():
        sub = split_histograms(child)
        if sub:
            out[key] = sub
    return out


def histogram_figure(groups: dict, unit: str):
    names = list(groups)
    # a fixed grid: constrained layout costs seconds per figure at 6 x 3 panels
    fig = io.new_figure(10.0, 1.8 * len(names), layout=None)
    axes = fig.subplots(len(names), 3, squeeze=False, gridspec_kw={"hspace": 0.7, "wspace": 0.25})
    titles = {"values": "action value", "step_change": "‖a[t+1]−a[t]‖", "motion": "motion per episode"}
    for row, name in enumerate(names):
        for col, key in enumerate(titles):
            ax, s = axes[row, col], groups[name][unit][key]
            if "histogram" in s:
                h = s["histogram"]
                ax.stairs(h["counts"], h["edges"], fill=True)
            ax.set_title(f"{name}: {titles[key]}", fontsize=8)
            ax.tick_params(labelsize=6)
    fig.suptitle(f"Training action magnitudes per group ({unit} units)", fontsize=10)
    return fig


def scatter_figure(motions: list[EpisodeMotion], layout: GroupLayout):
    fig = io.new_figure(5.0, 4.0)
    ax = fig.subplots()
    ax.scatter([m.base_distance for m in motions], [m.arm_motion for m in motions], s=12)
    ax.set_xlabel("base distance travelled per episode (m)")
    ax.set_ylabel("arm path length per episode (rad)")
    ax.set_title(f"Per training episode: {' + '.join(layout.names_with_role('arm'))} vs base", fontsize=10)
    return fig


def run(params, dataset: str = "data/dataset", split: str = "data/split.json", out: str = "results/analyze"):
    """``bpi0 analyze``: metrics.json and plots in ``out``."""
    data = io.load_train(dataset, split)
    layout = params.layout.build()
    metrics, motions = analyze(
        data,
        layout,
        bins=params.analyze.bins,
        max_weight=params.analyze.max_weight,
        min_std=params.normstats.min_std,
        min_base_motion=params.filter.min_base_motion,
    )
    figures = {f"histograms_{u}.png": histogram_figure(metrics["groups"], u) for u in UNITS}
    figures["motion_scatter.png"] = scatter_figure(motions["raw"], layout)
    histograms = split_histograms(metrics)
    out = Path(out)
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "histograms.json", histograms)
    for name, fig in figures.items():
        io.save_png(fig, out / name)
