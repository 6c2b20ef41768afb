"""Tabulate short design runs: for each run folder (``bpi0 train`` + ``bpi0 eval`` outputs), the params
that differ from ``params.yaml`` (from the run's ``metadata.json``), a note, and the closed-loop outcome
counts (from ``eval/metrics.json``).

    uv run python scripts/design_runs.py RUN_DIR[#NOTE]... > results/design_runs.tsv

``#NOTE`` says what the run's params cannot (e.g. the dataset was fetched with other ``dataset.sim``).

The embedded task's design was chosen with runs like these before the committed ``make repro``;
``README.md`` ("Designs tried") cites the table this writes instead of typing its numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

#: params a run may differ in that say nothing about the design (the seed is its own column)
_IGNORED = ("train.seed",)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("group_weights",):
            out |= _flat(v, key + ".")
        else:
            out[key] = v
    return out


def main(runs: list[str], base: str = "params.yaml") -> None:
    reference = _flat(yaml.safe_load(Path(base).read_text()))
    cols = ("run", "seed", "differs from params.yaml", "note", "successes", "rollouts", "outcomes")
    print("\t".join(cols))
    for arg in runs:
        path, _, note = arg.partition("#")
        run = Path(path)
        meta = json.loads((run / "metadata.json").read_text())
        params = _flat(meta["params"])
        diff = {
            k: v
            for k, v in params.items()
            if k in reference and reference[k] != v and k not in _IGNORED and not k.startswith("ablation.")
        }
        sim = json.loads((run / "eval" / "metrics.json").read_text())["closed_loop"]["policy"]
        outcomes = ",".join(f"{k}={n}" for k, n in sim["outcomes"].items())
        row = (
            run.name,
            str(params["train.seed"]),
            json.dumps(diff, sort_keys=True),
            note,
            str(sim["successes"]),
            str(sim["episodes"]),
            outcomes,
        )
        print("\t".join(row))


if __name__ == "__main__":
    main(sys.argv[1:])
