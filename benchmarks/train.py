"""Training throughput of both backends at the tiny config, and the loader's share of a step.

    uv run python benchmarks/train.py [--steps 20] [--batch-size 16] [--dataset data/dataset]

Without ``--dataset`` a small LeRobot dataset (12 episodes of 40 frames, three 64×64
cameras, the embedded default's shapes) is written to a temporary folder. Each
backend is warmed up (compilation) and then timed over ``--steps`` steps; the
loader time is the chunk loader's batch plus ``PolicyIO`` (normalise, pad, images,
prompts), the step time is the backend's ``train_step`` (which syncs: it returns
Python floats). The process's CPU time over the same steps gives the cores a step keeps
busy and the samples per core-second (what two runs side by side on two cores can reach).
Prints one table and the JAX/PyTorch ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from balanced_pi0 import determinism

determinism.apply()  # the pins every bpi0 stage runs under (one intra-op thread), before numpy/torch load

import numpy as np  # noqa: E402

from balanced_pi0 import backends, curriculum, flow  # noqa: E402
from balanced_pi0 import config as _config  # noqa: E402
from balanced_pi0.policy_io import PolicyIO  # noqa: E402
from balanced_pi0.train import loader_factory  # noqa: E402

CAMERAS = ("head", "left_wrist", "right_wrist")


@dataclass(frozen=True)
class _Episode:
    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict
    success: bool = True
    seed: int = 0
    arm_heavy: bool = False


def make_dataset(root: Path, resolution: int) -> tuple[str, str, str]:
    from balanced_pi0.data.split import make_split, write_split
    from balanced_pi0.data.writer import write_dataset
    from balanced_pi0.prep import normstats

    rng = np.random.default_rng(0)
    episodes = []
    for e in range(12):
        t = np.arange(40, dtype=np.float32)[:, None]
        action = np.sin(0.1 * t + rng.uniform(0, 6, 23)).astype(np.float32)
        images = {c: rng.integers(0, 256, (40, resolution, resolution, 3), dtype=np.uint8) for c in CAMERAS}
        episodes.append(_Episode("reach the cube", action, action, images, seed=e))
    dataset, split, stats = str(root / "dataset"), str(root / "split.json"), str(root / "norm_stats")
    write_dataset(episodes, dataset, repo_id="bench/train", fps=10, cameras=CAMERAS)
    write_split(split, make_split(list(range(12)), 0.2, 0))
    normstats.run(_config.from_dict({"normstats": {"bins": 10_000}}), dataset, split, stats)
    return dataset, split, stats


def bench(params: _config.Params, dataset: str, split: str, stats: str, steps: int, warmup: int) -> dict:
    tc = params.train
    episodes = curriculum.load_episode_sets(split, None)["train"]
    loader = loader_factory(params, dataset)(episodes, 0)
    io = PolicyIO.from_params(params, stats)
    batches = loader.batches()
    backend = backends.make_backend(params)
    tic = time.perf_counter()
    backend.init()
    init_s = time.perf_counter() - tic
    load_s, step_s = [], []
    cpu0 = wall0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            cpu0, wall0 = time.process_time(), time.perf_counter()
        tic = time.perf_counter()
        batch = io.model_batch(next(batches))
        b, h, d = batch["actions"].shape
        batch["noise"], batch["time"] = flow.sample_noise_time(0, step, b, h, d)
        mid = time.perf_counter()
        backend.train_step(batch, step)
        end = time.perf_counter()
        if step == 0:
            compile_s = end - mid
        if step >= warmup:
            load_s.append(mid - tic)
            step_s.append(end - mid)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    load, step = float(np.median(load_s)), float(np.median(step_s))
    return {
        "cores_busy": cpu / wall,
        "samples_per_core_s": tc.batch_size * steps / cpu,
        "init_s": init_s,
        "first_step_s": compile_s,
        "load_ms": 1e3 * load,
        "step_ms": 1e3 * step,
        "samples_per_s": tc.batch_size / (load + step),
        "loader_share": load / (load + step),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dataset", default=None, help="LeRobot root (needs --split and --norm-stats too)")
    ap.add_argument("--split", default="data/split.json")
    ap.add_argument("--norm-stats", default="data/norm_stats")
    ap.add_argument("--params", default="params.yaml", help="params for --dataset (its cameras and model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset is None:
            dataset, split, stats = make_dataset(Path(tmp), resolution=64)
        else:
            dataset, split, stats = args.dataset, args.split, args.norm_stats
        rows = {}
        for backend in ("jax", "torch"):
            overrides = {"train.backend": backend, "train.batch_size": args.batch_size}
            if args.dataset is None:  # the synthetic dataset's shapes
                params = _config.from_dict({"train": {"backend": backend, "batch_size": args.batch_size}})
            else:  # a pipeline dataset: the pipeline's params (cameras, resolution, model)
                params = _config.load(args.params, overrides)
            rows[backend] = bench(params, dataset, split, stats, args.steps, args.warmup)
    cams = ", ".join(params.dataset.cameras)
    print(
        f"tiny pi0, batch {args.batch_size}, action_horizon {params.model.action_horizon}, cameras {cams} "
        f"at {params.model.image_resolution}px; median of {args.steps} steps"
    )
    print(
        f"{'backend':8} {'init s':>7} {'1st step s':>10} {'load ms':>8} {'step ms':>8} {'samples/s':>10} "
        f"{'loader share':>12} {'cores busy':>10} {'samples/core-s':>14}"
    )
    for name, r in rows.items():
        print(
            f"{name:8} {r['init_s']:7.1f} {r['first_step_s']:10.1f} {r['load_ms']:8.1f} {r['step_ms']:8.1f} "
            f"{r['samples_per_s']:10.1f} {r['loader_share']:12.1%} {r['cores_busy']:10.2f} "
            f"{r['samples_per_core_s']:14.1f}"
        )
    ratio = rows["jax"]["samples_per_s"] / rows["torch"]["samples_per_s"]
    print(f"jax / torch samples/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
