"""Normalisation statistics of ``observation.state`` and ``action`` over the training episodes.

Exact where it can be, bounded where it cannot:

- mean and population std: float64 per-block moments merged with Chan's parallel
  formula (no sum-of-squares cancellation);
- q01/q99: *global* quantiles over all frames with numpy's ``linear`` definition.
  LeRobot 0.6.1 instead averages per-episode quantiles weighted by frame count,
  which is wrong whenever episodes differ (a dimension constant within each
  episode, 0..19 across episodes, gets q01 = q99 = 9.5). Here a first pass finds
  min/max, a second fills ``bins`` equal-width bins per dimension, and the order
  statistics numpy would interpolate are read from the bin holding their rank, so
  the error is at most ``(max − min) / bins`` (params require ``bins ≥ 10⁴``).
  Memory is ``bins × dims`` counts whatever the dataset length.

The files hold these exact statistics, nothing floored. Near-constant dimensions
would blow up normalisation (openpi issue #814), so ``policy_io`` floors the std
at ``min_std`` when it normalises, in one place; each file lists the dimensions
whose std lies below that floor (``below_min_std``).

Variants (one file each, ``<out>/<variant>.json``, openpi's ``norm_stats.json``
layout ``{"norm_stats": {"state": {...}, "actions": {...}}}``):

- ``standard``: the statistics above.
- ``balanced``: the seed's per-group rescaling of the *action* statistics (see
  ``balance_groups``); state statistics are the standard ones.
- ``per_timestep``: action statistics per (horizon step h, dimension), shape
  ``[action_horizon, D]``, over every action chunk a training sample can draw
  (the 2025 BEHAVIOR Challenge winners normalised per timestep, on delta actions;
  here on the dataset's actions as they are).
  Padded steps (LeRobot clamps steps past an episode's end to its last frame and
  flags them in ``action_is_pad``) are *excluded*: the loss never trains on them,
  so step h's statistics are over frames with index ≥ h of each episode.
- ``delta_per_timestep``: the same per-timestep statistics of *delta actions*
  (``groups.to_delta_actions``: on the layout's delta-mask dims, ``a[t+h] − s[t]``
  with ``s[t]`` the state at the chunk's first step; the other dims as they are).
  This is how the BEHAVIOR Challenge 2025 winner normalised (openpi's
  ``DeltaActions`` + per-timestep z-score); ``train.delta_actions`` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from balanced_pi0 import io
from balanced_pi0.errors import InputError
from balanced_pi0.groups import GroupLayout, to_delta_actions
from balanced_pi0.prep.motion import check_layout_width

QUANTILES = {"q01": 0.01, "q99": 0.99}
#: rows per block fed to the accumulators: amortises the histogram's per-call cost
BLOCK_ROWS = 1 << 16
#: the seed's guard against a zero group std, kept for faithfulness
BALANCE_EPS = 1e-8


@dataclass(frozen=True)
class FeatureStats:
    """float64 statistics with a trailing dimension axis (``[D]``, or ``[H, D]`` per timestep)."""

    count: int
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def to_json(self) -> dict:
        out = {k: np.asarray(getattr(self, k), dtype=np.float64).tolist() for k in _ARRAYS}
        out["count"] = int(self.count)
        return out


_ARRAYS = ("mean", "std", "q01", "q99", "min", "max")


# --------------------------------------------------------------------------------------
# Streaming statistics of one feature
# --------------------------------------------------------------------------------------
def feature_stats(
    batches: Callable[[], Iterable[np.ndarray]], *, bins: int, desc: str = "", total: int | None = None
) -> FeatureStats:
    """Statistics of the rows of ``batches()`` (called twice: one pass per call), each ``[n, D]``.

    ``total`` (rows) only sizes the progress bar.
    """
    count, mean, m2, lo, hi = _moments(_progress(batches(), f"{desc} min/max", total))
    if count == 0:
        raise InputError(f"{desc}: no frames to compute statistics on")
    hist = _histogram(_progress(batches(), f"{desc} quantiles", total), lo, hi, bins)
    qs = _quantiles(hist, lo, hi, count, list(QUANTILES.values()))
    std = np.sqrt(m2 / count)
    return FeatureStats(count=count, mean=mean, std=std, q01=qs[0], q99=qs[1], min=lo, max=hi)


def _progress(batches: Iterable[np.ndarray], desc: str, total: int | None) -> Iterator[np.ndarray]:
    with tqdm(total=total, desc=desc, unit="frame", disable=None, leave=False) as bar:
        for b in batches:
            bar.update(len(b))
            yield b


def _moments(batches: Iterable[np.ndarray]):
    count, mean, m2, lo, hi = 0, None, None, None, None
    for b in batches:
        if len(b) == 0:
            continue
        b = np.asarray(b, dtype=np.float64)
        n, bm = len(b), b.mean(axis=0)
        bm2 = ((b - bm) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2, lo, hi = n, bm, bm2, b.min(axis=0), b.max(axis=0)
            continue
        # Chan et al.: merge two (count, mean, M2) summaries exactly.
        delta, total = bm - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + bm2 + delta**2 * (count * n / total)
        count, lo, hi = total, np.minimum(lo, b.min(axis=0)), np.maximum(hi, b.max(axis=0))
    return count, mean, m2, lo, hi


def _bin_index(b: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    span = hi - lo
    scale = np.divide(bins, span, out=np.zeros_like(span), where=span > 0)
    return np.clip(((b - lo) * scale).astype(np.int64), 0, bins - 1)


def _histogram(batches: Iterable[np.ndarray], lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    dims = lo.shape[0]
    hist = np.zeros(dims * bins, dtype=np.int64)
    offset = np.arange(dims, dtype=np.int64) * bins
    for b in batches:
        idx = _bin_index(np.asarray(b, dtype=np.float64), lo, hi, bins) + offset
        hist += np.bincount(idx.ravel(), minlength=dims * bins)
    return hist.reshape(dims, bins)


def _quantiles(hist: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: int, qs: list[float]) -> np.ndarray:
    """[len(qs), D] quantiles with numpy's ``linear`` interpolation between order statistics.

    The k-th order statistic lies in the bin where the cumulative count first exceeds k;
    it is placed at its rank's position inside that bin, so it is off by less than a bin.
    """
    bins = hist.shape[1]
    width = (hi - lo) / bins
    cum = np.cumsum(hist, axis=1)
    out = np.empty((len(qs), hist.shape[0]))
    for d in range(hist.shape[0]):

        def order_stat(k: int, d: int = d) -> float:
            b = int(np.searchsorted(cum[d], k, side="right"))
            rank_in_bin = k - (cum[d, b] - hist[d, b])
            x = lo[d] + (b + (rank_in_bin + 0.5) / hist[d, b]) * width[d]
            return float(np.clip(x, lo[d], hi[d]))

        for i, q in enumerate(qs):
            h = (count - 1) * q
            k = int(np.floor(h))
            lower, upper = order_stat(k), order_stat(min(k + 1, count - 1))
            out[i, d] = lower + (h - k) * (upper - lower)
    return out


# --------------------------------------------------------------------------------------
# Row sources: whole columns, or per-episode slices, in blocks
# --------------------------------------------------------------------------------------
def column_blocks(x: np.ndarray) -> Callable[[], Iterator[np.ndarray]]:
    return lambda: (x[i : i + BLOCK_ROWS] for i in range(0, len(x), BLOCK_ROWS))


def slice_blocks(x: np.ndarray, spans: list[tuple[int, int]]) -> Callable[[], Iterator[np.ndarray]]:
    """Rows ``x[s:e]`` for each span, concatenated into blocks of about ``BLOCK_ROWS`` rows."""

    def gen() -> Iterator[np.ndarray]:
        pending, rows = [], 0
        for s, e in spans:
            if e > s:
                pending.append(x[s:e])
                rows += e - s
            if rows >= BLOCK_ROWS:
                yield np.concatenate(pending)
                pending, rows = [], 0
        if pending:
            yield np.concatenate(pending)

    return gen


def delta_blocks(data, spans: list[tuple[int, int]], h: int, mask: np.ndarray):
    """Rows ``to_delta_actions(a[t+h], s[t])`` for the chunk starts t of each span ``(start+h, stop)``."""

    def gen() -> Iterator[np.ndarray]:
        for s, e in spans:
            if e > s:
                yield to_delta_actions(data.action[s:e], data.state[s - h : e - h], mask)

    return gen


# --------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------
def below_min_std(stats: FeatureStats, min_std: float) -> list:
    """Indices whose std lies below ``min_std``: the dims normalisation floors (``[h, d]`` per timestep)."""
    where = np.argwhere(stats.std < min_std).tolist()
    return [i[0] for i in where] if stats.std.ndim == 1 else where


def balance_groups(actions: FeatureStats, layout: GroupLayout) -> tuple[FeatureStats, dict]:
    """The seed's balanced action statistics, reproduced as it computed them.

    For each group g, ``σ_g`` = mean of its dims' std; ``target`` = median over groups
    of ``σ_g``; ``s_g = target / (σ_g + 1e-8)``. Then ``std'_d = std_d · s_g`` and the
    quantile range is scaled the same way and re-centred on the *mean*:
    ``q01' = mean − (q99 − q01)·s_g / 2``, ``q99' = mean + (q99 − q01)·s_g / 2``.

    What it does to normalised magnitudes: z-scoring with ``std'`` gives every dim of
    group g a normalised std of ``1 / s_g = σ_g / target`` instead of 1. So the groups
    are *not* equalised: the raw-unit spread between groups comes back, relative to the
    median group (a group whose dims vary 10× more than the median's is 10× larger
    after normalisation, one that varies 10× less is 10× smaller). Quantile
    normalisation maps group g's q01–q99 range onto ``±1/s_g`` about the mean.
    """
    check_layout_width(layout, actions.mean.shape[-1], source="action statistics")
    group_std = {g.name: float(np.mean(actions.std[g.start : g.stop])) for g in layout.groups}
    target = float(np.median(list(group_std.values())))
    scale = np.ones_like(actions.std)
    for g in layout.groups:
        scale[g.start : g.stop] = target / (group_std[g.name] + BALANCE_EPS)
    half_range = (actions.q99 - actions.q01) * scale / 2
    balanced = replace(
        actions, std=actions.std * scale, q01=actions.mean - half_range, q99=actions.mean + half_range
    )
    report = {
        "target_std": target,
        "groups": {
            g.name: {
                "mean_std": group_std[g.name],
                "scale": float(scale[g.start]),
                "normalised_std": float(1.0 / scale[g.start]),
            }
            for g in layout.groups
        },
    }
    return balanced, report


def chunk_step_spans(data, horizon: int) -> list[list[tuple[int, int]]]:
    """For each horizon step h, the row spans holding ``a[t+h]`` for every non-padded chunk start t."""
    spans = [[(s + h, e) for s, e in zip(data.ep_start, data.ep_stop, strict=True)] for h in range(horizon)]
    for h, sp in enumerate(spans):
        if all(e <= s for s, e in sp):
            raise InputError(
                f"per_timestep: horizon step {h} has no unpadded frame: every training episode is shorter "
                f"than {h + 1} frames (model.action_horizon = {horizon})"
            )
    return [[(int(s), int(e)) for s, e in sp] for sp in spans]


def per_timestep_stats(
    data, horizon: int, *, bins: int, delta_mask: np.ndarray | None = None
) -> FeatureStats:
    """Action statistics per (horizon step, dim), stacked to ``[horizon, D]``.

    With ``delta_mask``, of the delta actions ``a[t+h] − s[t]`` on the masked dims.
    """
    per_step = [
        feature_stats(
            slice_blocks(data.action, sp) if delta_mask is None else delta_blocks(data, sp, h, delta_mask),
            bins=bins,
            desc=f"{'delta ' if delta_mask is not None else ''}actions[h={h}]",
        )
        for h, sp in enumerate(chunk_step_spans(data, horizon))
    ]
    stack = {k: np.stack([getattr(s, k) for s in per_step]) for k in _ARRAYS}
    return FeatureStats(count=per_step[0].count, **stack)


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------
NOTES = {
    "quantiles": "global q01/q99 over all training frames (numpy 'linear' definition), from a "
    "two-pass histogram; error <= (max - min) / bins",
    "std": "population std (ddof=0)",
    "floor": "exact statistics, nothing floored; normalisation floors std at min_std so that "
    "near-constant dimensions do not blow up (openpi issue #814); 'below_min_std' lists those dims",
}


BALANCED_NOTE = (
    "actions: the seed's per-group rescaling. s_g = median_g(mean std of group g) / mean std of group g; "
    "std' = std * s_g; q01', q99' = mean -/+ (q99 - q01) * s_g / 2 (re-centred on the mean). Z-scored with "
    "std', group g's normalised std is 1/s_g (see 'balanced.groups.*.normalised_std'): groups are not "
    "equalised, their raw spread relative to the median group returns"
)


def compute_variants(data, variants, *, layout: GroupLayout, bins: int, min_std: float, horizon: int):
    """``{variant: norm_stats document}`` for the training ``LowDim`` ``data``."""
    state = feature_stats(column_blocks(data.state), bins=bins, desc="state", total=len(data.state))
    actions = feature_stats(column_blocks(data.action), bins=bins, desc="actions", total=len(data.action))
    docs = {}
    for variant in variants:
        notes, extra, var_actions = dict(NOTES), {}, actions
        if variant == "balanced":
            var_actions, extra["balanced"] = balance_groups(actions, layout)
            notes["balanced"] = BALANCED_NOTE
        elif variant == "per_timestep":
            var_actions = per_timestep_stats(data, horizon, bins=bins)
            extra["per_timestep"] = {"action_horizon": horizon, "padded_steps": "excluded"}
            notes["per_timestep"] = (
                "actions statistics have shape [action_horizon, D]: row h is over a[t+h] for every chunk "
                "start t with t+h inside the episode; steps LeRobot would pad (clamped to the last frame, "
                "flagged in action_is_pad) are excluded"
            )
        elif variant == "delta_per_timestep":
            mask = layout.delta_mask()
            var_actions = per_timestep_stats(data, horizon, bins=bins, delta_mask=mask)
            extra["per_timestep"] = {"action_horizon": horizon, "padded_steps": "excluded"}
            extra["delta_mask"] = mask.tolist()
            notes["delta_per_timestep"] = (
                "actions statistics of delta actions, shape [action_horizon, D]: on the dims where "
                "delta_mask is true, row h is over a[t+h] - state[t] (state at the chunk's first step); "
                "elsewhere over a[t+h]; padded steps excluded"
            )
        docs[variant] = _document(variant, state, var_actions, min_std, notes, extra, data, bins)
    return docs


def _document(variant, state, actions, min_std, notes, extra, data, bins) -> dict:
    return {
        "norm_stats": {"state": state.to_json(), "actions": actions.to_json()},
        "variant": variant,
        "episodes": len(data.episodes),
        "min_std": min_std,
        "bins": bins,
        "below_min_std": {"state": below_min_std(state, min_std), "actions": below_min_std(actions, min_std)},
        "notes": notes,
        **extra,
    }


def run(params, dataset: str = "data/dataset", split: str = "data/split.json", out: str = "data/norm_stats"):
    """``bpi0 normstats``: write ``<out>/<variant>.json`` for each variant in params."""
    cfg = params.normstats
    data = io.load_train(dataset, split)
    layout = params.layout.build()
    check_layout_width(layout, data.action.shape[1], source=f"{dataset} action")
    docs = compute_variants(
        data,
        cfg.variants,
        layout=layout,
        bins=cfg.bins,
        min_std=cfg.min_std,
        horizon=params.model.action_horizon,
    )
    for v, doc in docs.items():  # written only once every variant succeeded
        io.write_json(Path(out) / f"{v}.json", doc)
