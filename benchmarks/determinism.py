"""What the host pins cost: tiny-pi0 train step time with ``DETERMINISM_ENV`` against the same
environment without the host pins (``determinism.without_host_pins``), both backends, one run.

    uv run python benchmarks/determinism.py [--steps 8] [--warmup 2] [--batch-size 4] [--rounds 2]

The pins act when numpy, torch and jax load, so each (backend, pinned or not) is a fresh interpreter
that applies its environment before importing them; the runs take turns, never overlap, and share
one small LeRobot dataset (``benchmarks/train.py``'s). Prints, per backend, the best over rounds of
the median step time, and the pinned/unpinned ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from balanced_pi0 import determinism


def child(backend: str, mode: str, data: list[str], steps: int, warmup: int, batch_size: int) -> None:
    if mode == "unpinned":
        determinism.DETERMINISM_ENV = determinism.without_host_pins()
    determinism.apply()  # before numpy, torch and jax load, as bpi0 does
    sys.path.insert(0, str(Path(__file__).parent))
    import train as bench_train  # benchmarks/train.py

    from balanced_pi0 import config as _config

    params = _config.from_dict({"train": {"backend": backend, "batch_size": batch_size}})
    row = bench_train.bench(params, *data, steps, warmup)
    print(json.dumps(row))


def run_child(backend: str, mode: str, data: list[str], args: argparse.Namespace) -> dict:
    # The machine's own OPENBLAS_CORETYPE stays (determinism.HOST_KEEPS): its OpenBLAS may need it.
    pinned = determinism.DETERMINISM_ENV.keys() - determinism.HOST_KEEPS
    base = {k: v for k, v in os.environ.items() if k not in pinned}
    cmd = [sys.executable, __file__, "--child", backend, mode, *data]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, env=base, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=5, metavar=("BACKEND", "MODE", "DATASET", "SPLIT", "STATS"))
    args = ap.parse_args()
    if args.child:
        backend, mode, *data = args.child
        child(backend, mode, data, args.steps, args.warmup, args.batch_size)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import train as bench_train

    with tempfile.TemporaryDirectory() as tmp:
        data = list(bench_train.make_dataset(Path(tmp), resolution=64))
        rows: dict[tuple[str, str], float] = {}
        for r in range(args.rounds):  # alternate the order: a machine's load drifts between runs
            for backend in ("jax", "torch"):
                for mode in ("unpinned", "pinned")[:: 1 if r % 2 == 0 else -1]:
                    step = run_child(backend, mode, data, args)["step_ms"]
                    rows[backend, mode] = min(step, rows.get((backend, mode), step))
    print(
        f"tiny pi0, batch {args.batch_size}, 3 cameras at 64x64; median train step of {args.steps} steps, "
        f"best of {args.rounds} alternating rounds"
    )
    print(f"{'backend':8} {'unpinned ms':>12} {'pinned ms':>10} {'pinned/unpinned':>16}")
    for backend in ("jax", "torch"):
        free, pinned = rows[backend, "unpinned"], rows[backend, "pinned"]
        print(f"{backend:8} {free:12.1f} {pinned:10.1f} {pinned / free:15.2f}x")


if __name__ == "__main__":
    main()
