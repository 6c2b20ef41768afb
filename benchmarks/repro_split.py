"""Where `make repro`'s wall time goes: the per-stage times `scripts/repro.sh` logged.

    uv run python benchmarks/repro_split.py [results/repro_times.tsv]

Groups the stages by kind (the matrix stages train@<variant>-<seed> by their stage name and
variant), prints each kind's summed stage time, its share of all stage time, and the wall time
of the matrix phase against its summed stage time: the ratio is how many cores the workers
kept busy with stages (two workers on two cores: at most 2).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def read(path: Path) -> list[tuple[str, int, int]]:
    with path.open() as f:
        return [(r["stage"], int(r["worker"]), int(r["seconds"])) for r in csv.DictReader(f, delimiter="\t")]


def kind(stage: str) -> str:
    """``train@main-2`` → ``train@main``; other stages are their own kind."""
    return stage.rsplit("-", 1)[0] if "@" in stage else stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("times", nargs="?", default="results/repro_times.tsv")
    rows = read(Path(ap.parse_args().times))
    total = sum(s for _, _, s in rows)
    by_kind: dict[str, int] = defaultdict(int)
    for stage, _, s in rows:
        by_kind[kind(stage)] += s
    print(f"{'stage (kind)':28} {'seconds':>8} {'share':>7}")
    for k, s in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{k:28} {s:8d} {s / total:7.1%}")
    print(f"{'all stages':28} {total:8d}")
    matrix = [(w, s) for stage, w, s in rows if "@" in stage]
    per_worker: dict[int, int] = defaultdict(int)
    for w, s in matrix:
        per_worker[w] += s
    if per_worker:
        wall = max(per_worker.values())  # the matrix phase ends with its slowest worker
        busy = sum(per_worker.values())
        print(
            f"matrix phase: {busy} s of stages in {wall} s wall over {len(per_worker)} workers: {busy / wall:.2f}x"
        )


if __name__ == "__main__":
    main()
