"""The whole DVC pipeline at toy scale: byte-identical reruns and a DVC remote round trip.

Two fresh copies of the project run `dvc repro` from nothing; their `dvc.lock` files (the hash
of every stage's every output: dataset, statistics, checkpoints, metrics, figures, the paper's
PDF) must be identical. Then the first copy pushes its results to a local DVC remote, and a git
clone of it gets them back with `dvc pull` and finds the pipeline up to date.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: What a project copy needs: the pipeline, its code (stage deps), the paper source.
PROJECT_FILES = (
    "dvc.yaml",
    "pyproject.toml",
    "uv.lock",
    "src",
    "paper/paper.typ",
    "paper/metaworld_summary.json",
)


def toy_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["sim"].update({"episodes": 6, "resolution": 32, "max_steps": 100})
    params["model"]["image_resolution"] = 16
    train = params["train"]
    train.update({"batch_size": 4, "checkpoint_every": 2, "log_every": 1})
    train["curriculum"] = [{"steps": 3, "episodes": "train"}]
    train["optimizer"].update({"warmup_steps": 1, "decay_steps": 3})
    params["eval"].update(
        {"rollouts": 1, "max_steps": 10, "num_flow_samples": 1, "num_steps": 2, "videos": 1}
    )
    params["ablation"] = {
        "seeds": [0],
        "variants": {"main": {}, "mask_diluted": {"train.loss.mask_normalization": "diluted"}},
    }
    params["report"] = {
        "reference": "main",
        "questions": {"padding": ["main", "mask_diluted"]},
        "loss_curves": [],
    }
    return params


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1"})
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    return env


def sh(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def project_copy(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dst)
    (root / "params.yaml").write_text(yaml.safe_dump(toy_params(), sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    sh(str(BIN / "dvc"), "init", "-q", cwd=root)
    sh(str(BIN / "dvc"), "config", "core.analytics", "false", cwd=root)
    # After `dvc init`, which writes its own: ours hides each run's host.json and bytecode from DVC.
    shutil.copyfile(REPO / ".dvcignore", root / ".dvcignore")
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "toy project", cwd=root)
    return root


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The first copy runs plain `dvc repro`; the second `make repro`'s script, two workers
    sharing the matrix, as the README's first command does."""
    base = tmp_path_factory.mktemp("pipeline")
    first = project_copy(base / "first")
    sh(str(BIN / "dvc"), "repro", cwd=first)
    second = project_copy(base / "second")
    shutil.copytree(REPO / "scripts", second / "scripts")
    env = {"JOBS": "2", "REPRO_DVC": str(BIN / "dvc")}
    sh("env", *(f"{k}={v}" for k, v in env.items()), "scripts/repro.sh", cwd=second)
    return base, [first, second]


def test_pipeline_reruns_byte_for_byte(two_runs):
    _, (first, second) = two_runs
    lock = (first / "dvc.lock").read_text()
    assert "paper/paper.pdf" in lock and "runs/mask_diluted-s0/final" in lock and "environment.json" in lock
    # Every stage's every hash; DVC writes the stages in the order they ran, which the script changes.
    assert yaml.safe_load(lock) == yaml.safe_load((second / "dvc.lock").read_text())
    assert (first / "paper" / "paper.pdf").read_bytes() == (second / "paper" / "paper.pdf").read_bytes()


def test_repro_script_times_every_stage_once(two_runs):
    _, (_, second) = two_runs
    rows = [r.split("\t") for r in (second / "results" / "repro_times.tsv").read_text().splitlines()]
    assert rows[0] == ["stage", "worker", "seconds"]
    stages = sorted(r[0] for r in rows[1:])
    runs = [f"{kind}@{run}" for run in ("main-0", "mask_diluted-0") for kind in ("eval", "train")]
    upstream = ["analyze", "env", "expert", "fetch", "filter", "normstats", "paper"]
    assert stages == sorted(upstream + runs), stages
    assert {r[1] for r in rows[1:] if "@" in r[0]} <= {"0", "1"}


def test_results_round_trip_through_a_dvc_remote(two_runs):
    base, (first, _) = two_runs
    remote = base / "remote"
    sh(str(BIN / "dvc"), "remote", "add", "-d", "local", str(remote), cwd=first)
    sh("git", "add", "-A", cwd=first)
    sh("git", "commit", "-qm", "results", cwd=first)
    sh(str(BIN / "dvc"), "push", "-q", cwd=first)
    clone = base / "clone"
    sh("git", "clone", "-q", str(first), str(clone), cwd=base)
    sh(str(BIN / "dvc"), "pull", "-q", cwd=clone)
    assert (clone / "paper" / "paper.pdf").read_bytes() == (first / "paper" / "paper.pdf").read_bytes()
    status = sh(str(BIN / "dvc"), "status", cwd=clone)
    assert "up to date" in status, status
