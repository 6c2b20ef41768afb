"""Norm statistics: ours (exact moments, two-pass histogram quantiles) vs LeRobot's compute_stats.

Both run on the same low-dimensional columns of the same LeRobot dataset (loaded once,
not timed): LeRobot as its writer does it (``compute_episode_stats`` per episode, then
``aggregate_stats``), ours as ``bpi0 normstats`` does for the ``standard`` variant.
Prints frames/s, peak traced memory (tracemalloc: NumPy buffers included) and the
worst q01/q99 error against ``numpy.quantile`` in units of (max − min), side by side.

    uv run python benchmarks/normstats.py                   # synthetic dataset in a temp dir
    uv run python benchmarks/normstats.py --dataset data/dataset
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def synthetic_dataset(root: Path, episodes: int, frames: int, dim: int = 23) -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        k: {"dtype": "float32", "shape": (dim,), "names": None} for k in ("observation.state", "action")
    }
    ds = LeRobotDataset.create(
        repo_id="bench/normstats", root=root, fps=10, features=features, use_videos=False
    )
    rng = np.random.default_rng(0)
    for e in range(episodes):
        walk = np.cumsum(rng.normal(0, 0.05, (frames, dim)), axis=0) + rng.normal(0, 1, dim)
        walk[:, 0] = e % 20  # constant within each episode, as a task id or a parked joint
        for row in walk.astype(np.float32):
            ds.add_frame({"observation.state": row, "action": row, "task": "bench"})
        ds.save_episode()
    ds.finalize()
    return root


def lerobot_stats(data) -> dict:
    from lerobot.datasets.compute_stats import aggregate_stats, compute_episode_stats

    features = {
        k: {"dtype": "float32", "shape": (data.state.shape[1],)} for k in ("observation.state", "action")
    }
    per_episode = [
        compute_episode_stats({"observation.state": data.state[s:e], "action": data.action[s:e]}, features)
        for s, e in zip(data.ep_start, data.ep_stop, strict=True)
    ]
    return aggregate_stats(per_episode)


def our_stats(data, bins: int) -> dict:
    from balanced_pi0.prep.normstats import column_blocks, feature_stats

    return {
        k: feature_stats(column_blocks(x), bins=bins, desc=k).__dict__
        for k, x in (("observation.state", data.state), ("action", data.action))
    }


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, peak


def worst_quantile_error(stats: dict, data) -> float:
    worst = 0.0
    for key, x in (("observation.state", data.state), ("action", data.action)):
        x = x.astype(np.float64)
        span = np.maximum(x.max(axis=0) - x.min(axis=0), 1e-12)
        for name, q in (("q01", 0.01), ("q99", 0.99)):
            err = np.abs(np.asarray(stats[key][name]) - np.quantile(x, q, axis=0)) / span
            worst = max(worst, float(err.max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="LeRobot v3.0 root (default: a synthetic one)")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--bins", type=int, default=100_000)
    args = parser.parse_args()
    from balanced_pi0.data.lowdim import load_lowdim

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset or synthetic_dataset(Path(tmp) / "ds", args.episodes, args.frames)
        data = load_lowdim(root)
    n = data.num_frames
    rows = {}
    for name, fn in (("lerobot", lambda: lerobot_stats(data)), ("ours", lambda: our_stats(data, args.bins))):
        stats, seconds, peak = measure(fn)
        rows[name] = (n / seconds, peak / 2**20, worst_quantile_error(stats, data))
    print(
        f"{n} frames, {len(data.episodes)} episodes, state/action dims {data.state.shape[1]}/{data.action.shape[1]}"
    )
    print(f"{'':10s}{'frames/s':>12s}{'peak MiB':>10s}{'worst q err / (max-min)':>26s}")
    for name, (fps, mib, err) in rows.items():
        print(f"{name:10s}{fps:12.0f}{mib:10.1f}{err:26.2e}")
    (lf, lm, le), (of, om, oe) = rows["lerobot"], rows["ours"]
    print(
        f"ours / lerobot: speed {of / lf:.2f}x, peak memory {om / lm:.2f}x, quantile error {oe / max(le, 1e-300):.2e}x"
    )


if __name__ == "__main__":
    main()
