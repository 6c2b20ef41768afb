"""Training samples per second: the chunk loader versus ``LeRobotDataset.__getitem__``.

Both read the same LeRobot v3.0 dataset with the same chunk semantics
(``delta_timestamps = {"action": [k / fps for k < H]}``, all cameras, uint8 or
float images) and serve the same random sample indices. LeRobot's reader
assembles one item at a time (and, with image storage, decodes the PNGs of every
row of the action chunk); the chunk loader gathers a batch of chunks from
preloaded columns and decodes only the current frames. Measured in one run,
printed side by side with the ratio.

    uv run python benchmarks/loader.py [--root data/dataset] [--horizon 10] [--batch-size 16] [--samples 400]

Without ``--root`` (or if it does not exist) a synthetic dataset in the embedded
task's shape (23-D, three 64x64 cameras, 60 episodes) is written to a temp folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from balanced_pi0.data.loader import ChunkLoader
from balanced_pi0.data.writer import write_dataset

CAMERAS = ("head", "left_wrist", "right_wrist")


@dataclass(frozen=True)
class _Episode:
    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict = field(default_factory=dict)


def synthetic_episodes(n: int, res: int, seed: int = 0):
    """Smooth trajectories and smooth moving images (PNG sizes like rendered frames, not noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res]
    for e in range(n):
        length = int(rng.integers(60, 140))
        action = np.cumsum(rng.normal(0, 0.02, (length, 23)), axis=0).astype(np.float32)
        images = {}
        for c, cam in enumerate(CAMERAS):
            t = np.arange(length)[:, None, None]
            base = (xx[None] * 2 + yy[None] + 3 * t + 40 * c) % 256
            img = np.stack([base, (base + 85) % 256, (255 - base)], axis=-1).astype(np.uint8)
            images[cam] = img
        yield _Episode(f"reach the cube with the {'left' if e % 2 else 'right'} hand", action, action, images)


def bench_lerobot(root: Path, delta_timestamps: dict, indices: np.ndarray) -> float:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("bench/loader", root=root, delta_timestamps=delta_timestamps, video_backend="pyav")
    ds[int(indices[0])]  # warm up
    start = time.perf_counter()
    for i in indices:
        ds[int(i)]
    return len(indices) / (time.perf_counter() - start)


def bench_chunk_loader(loader: ChunkLoader, indices: np.ndarray, batch_size: int) -> float:
    loader.batch(indices[:batch_size])  # warm up
    start = time.perf_counter()
    for b in range(0, len(indices), batch_size):
        loader.batch(indices[b : b + batch_size])
    return len(indices) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("data/dataset"))
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if not (root / "meta/info.json").exists():
            root = Path(tmp) / "dataset"
            print(f"{args.root} not found: writing a synthetic 60-episode dataset to {root}")
            write_dataset(synthetic_episodes(60, 64), root, repo_id="bench/loader", fps=10, cameras=CAMERAS)
        start = time.perf_counter()
        loader = ChunkLoader(root, action_horizon=args.horizon, batch_size=args.batch_size)
        setup = time.perf_counter() - start
        rng = np.random.default_rng(args.seed)
        indices = rng.integers(0, loader.num_samples, args.samples)
        ours = bench_chunk_loader(loader, indices, args.batch_size)
        # LeRobot's item index is the row among all frames; our rows are sorted the same way.
        theirs = bench_lerobot(root, loader.delta_timestamps, indices)
    print(
        f"dataset: {root if root == args.root else 'synthetic'}; {loader.num_samples} frames, H={args.horizon}"
    )
    print(f"chunk loader setup (preload columns and encoded frames): {setup:.2f} s")
    print(f"{'reader':<34}{'samples/s':>12}")
    print(f"{'LeRobotDataset.__getitem__':<34}{theirs:>12.1f}")
    print(f"{'ChunkLoader.batch (B=' + str(args.batch_size) + ')':<34}{ours:>12.1f}")
    print(f"ratio: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
