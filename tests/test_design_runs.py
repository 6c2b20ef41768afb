"""scripts/design_runs.py: one row per run, the params it changed, its outcome counts."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, name: str, params: dict, outcomes: dict) -> Path:
    run = tmp_path / name
    (run / "eval").mkdir(parents=True)
    (run / "metadata.json").write_text(json.dumps({"params": params}))
    closed = {"outcomes": outcomes, "successes": outcomes["success"], "episodes": sum(outcomes.values())}
    (run / "eval" / "metrics.json").write_text(json.dumps({"closed_loop": {"policy": closed}}))
    return run


def test_rows_name_the_changed_params_the_note_and_the_outcomes(tmp_path, capsys):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    changed = json.loads(json.dumps(base))
    changed["train"]["batch_size"] = 32
    changed["train"]["seed"] = 2  # the seed is its own column, not a change
    same = _run(tmp_path, "same", base, {"success": 3, "wrong_place": 1})
    other = _run(tmp_path, "other", changed, {"success": 1, "arm_idle": 2})
    module = runpy.run_path(str(ROOT / "scripts" / "design_runs.py"))
    module["main"]([str(same), f"{other}#a note"], base=str(ROOT / "params.yaml"))
    header, row_same, row_other = capsys.readouterr().out.strip().split("\n")
    assert header.split("\t")[2] == "differs from params.yaml"
    assert row_same.split("\t") == ["same", "0", "{}", "", "3", "4", "success=3,wrong_place=1"]
    assert row_other.split("\t") == [
        "other",
        "2",
        '{"train.batch_size": 32}',
        "a note",
        "1",
        "3",
        "success=1,arm_idle=2",
    ]
