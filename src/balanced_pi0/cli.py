"""``bpi0 <stage>``: one subcommand per pipeline stage.

Every stage reads its params from ``--params`` (default ``params.yaml``) and takes
its inputs and outputs as options whose defaults are the pipeline's paths, so a
stage can run on a researcher's own dataset outside DVC. The stage code lives in
the module named in ``STAGES``; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# Nothing here may load numpy, torch or jax at import: ``main`` pins their CPU kernels first
# (``determinism.apply``), and those pins are read once, when each library loads.
from balanced_pi0 import determinism
from balanced_pi0.errors import InputError

if TYPE_CHECKING:
    from balanced_pi0 import config as _config


@dataclass(frozen=True)
class Opt:
    flag: str
    default: str | None
    help: str


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    #: ``module:function`` called as ``function(params, **options)``
    target: str
    options: tuple[Opt, ...] = field(default_factory=tuple)
    #: one run of the ablation matrix: takes --variant and --seed (``config.for_run``)
    per_run: bool = False


# The pipeline, in order. Paths are the DVC stage outputs (see dvc.yaml).
STAGES: tuple[Stage, ...] = (
    Stage(
        "layout",
        "print the action-group layout and the effective loss weights the params define",
        "balanced_pi0.cli:show_layout",
    ),
    Stage(
        "env",
        "record the environment: determinism flags, library versions, devices",
        "balanced_pi0.environment:run",
        (Opt("--out", "results/environment.json", "environment record"),),
    ),
    Stage(
        "fetch",
        "write the LeRobot v3.0 dataset from dataset.source (sim, hub:, b1k:, metaworld:<tasks>) and split.json",
        "balanced_pi0.data.fetch:fetch",
        (
            Opt("--out", "data/dataset", "LeRobot v3.0 dataset root to write"),
            Opt("--split", "data/split.json", "train/val episode split to write"),
        ),
    ),
    Stage(
        "analyze",
        "action magnitudes per group on the training episodes: metrics.json, plots, suggested weights",
        "balanced_pi0.prep.analyze:run",
        (
            Opt("--dataset", "data/dataset", "LeRobot v3.0 dataset root"),
            Opt("--split", "data/split.json", "train/val split"),
            Opt("--out", "results/analyze", "output folder"),
        ),
    ),
    Stage(
        "normstats",
        "exact norm statistics of the training episodes, one openpi norm_stats file per variant",
        "balanced_pi0.prep.normstats:run",
        (
            Opt("--dataset", "data/dataset", "LeRobot v3.0 dataset root"),
            Opt("--split", "data/split.json", "train/val split"),
            Opt("--out", "data/norm_stats", "output folder (<variant>.json)"),
        ),
    ),
    Stage(
        "filter",
        "score whole training episodes by arm vs base motion and list the arm-heavy ones",
        "balanced_pi0.prep.filter:run",
        (
            Opt("--dataset", "data/dataset", "LeRobot v3.0 dataset root"),
            Opt("--split", "data/split.json", "train/val split"),
            Opt("--out", "data/arm_heavy.json", "arm-heavy episode list and scores"),
            Opt("--report", "results/filter", "report folder (report.md, histograms.png)"),
        ),
    ),
    Stage(
        "train",
        "train pi0 (train.backend) with the curriculum and the loss of params; resumes from the last checkpoint",
        "balanced_pi0.train:train",
        (
            Opt("--dataset", "data/dataset", "LeRobot v3.0 dataset root"),
            Opt("--split", "data/split.json", "train/val split"),
            Opt("--arm-heavy", "data/arm_heavy.json", "arm-heavy episode list (read by arm_heavy phases)"),
            Opt("--norm-stats", "data/norm_stats", "folder of <variant>.json norm stats"),
            Opt("--out", "runs/train", "run folder (checkpoints/, live/, final/, metadata.json)"),
            Opt("--stop-after", None, "stop after this many steps, as a kill would (resume by rerunning)"),
        ),
        per_run=True,
    ),
    Stage(
        "expert",
        "the scripted expert through the closed-loop harness on the eval scenes (checks the harness)",
        "balanced_pi0.evaluate.stage:expert",
        (Opt("--out", "results/expert/metrics.json", "expert rollout summary"),),
    ),
    Stage(
        "eval",
        "offline per-group metrics on the validation episodes and closed-loop rollouts of a trained run",
        "balanced_pi0.evaluate.stage:run",
        (
            Opt("--dataset", "data/dataset", "LeRobot v3.0 dataset root"),
            Opt("--split", "data/split.json", "train/val split (validation episodes are scored)"),
            Opt("--norm-stats", "data/norm_stats", "folder of <variant>.json norm stats"),
            Opt("--run-dir", "runs/train", "trained run folder (reads final/params.npz)"),
            Opt("--expert", "results/expert/metrics.json", "expert rollouts on the same scenes"),
            Opt("--out", "runs/train/eval", "output folder (metrics.json, offline.png, rollout GIFs)"),
        ),
        per_run=True,
    ),
    Stage(
        "paper",
        "aggregate every run of the ablation into paper/generated/ and compile the paper",
        "balanced_pi0.report:run",
        (
            Opt("--runs", "runs", "folder of <variant>-s<seed> runs"),
            Opt("--split", "data/split.json", "train/val split"),
            Opt("--arm-heavy", "data/arm_heavy.json", "arm-heavy episode list"),
            Opt("--analyze", "results/analyze/metrics.json", "analysis metrics"),
            Opt("--paper", "paper/paper.typ", "Typst source"),
            Opt("--out", "paper/paper.pdf", "PDF to write"),
            Opt(
                "--metaworld",
                "experiments/metaworld/results/summary.json",
                "Meta-World summary for the appendix (`bpi0 metaworld-summary`; absent: not run)",
            ),
        ),
    ),
    Stage(
        "metaworld-summary",
        "per-task closed-loop success of every Meta-World run and of the expert: summary.json and a table",
        "balanced_pi0.report:metaworld_summary",
        (
            Opt("--runs", "runs", "folder of <variant>-s<seed> runs (each with eval/metrics.json)"),
            Opt("--expert", "results/expert/metrics.json", "expert rollouts on the same scenes"),
            Opt("--out", "results/summary.json", "summary to write (the .md table beside it)"),
        ),
    ),
)


def show_layout(params: _config.Params) -> None:
    layout = params.layout.build()
    loss = params.train.loss
    raw = layout.weight_vector(loss.group_weights, loss.dimension_weights)
    real = raw[: layout.real_action_dim]
    eff = real / real.mean()
    out = layout.to_dict()
    out["effective_dimension_weights"] = [round(float(v), 6) for v in eff]
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bpi0",
        description="balanced_pi0 pipeline stages. Each stage reads --params and writes its outputs.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for st in STAGES:
        p = sub.add_parser(st.name, help=st.help, description=st.help)
        p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        p.add_argument(
            "-S",
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a param, e.g. -S train.loss.strategy=delta (value parsed as YAML)",
        )
        if st.per_run:
            p.add_argument(
                "--variant", default=None, help="ablation variant (ablation.variants); default: none"
            )
            p.add_argument("--seed", type=int, default=None, help="run seed (sets train.seed)")
        for o in st.options:
            p.add_argument(o.flag, default=o.default, help=f"{o.help} (default: %(default)s)")
    return parser


def _overrides(items: list[str]) -> dict:
    import yaml

    from balanced_pi0 import config as _config

    out = {}
    for item in items:
        if "=" not in item:
            raise _config.ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def use_compile_cache() -> None:
    """JAX's persistent compilation cache, shared by every stage on this host.

    A tiny-pi0 stage spends more time compiling than computing (measured here: an eval stage
    compiled 109 programs in 38 s, the model's eager init alone 13 s; 2 s from the cache). The
    cache holds the executables XLA compiled, keyed by the program, the XLA flags and the jax
    version, so a hit runs the very code a fresh compile would: outputs do not depend on it.
    ``JAX_COMPILATION_CACHE_DIR`` moves it; set it empty to turn it off.
    """
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(cache_home, "balanced_pi0", "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the many small ones too
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def main(argv: list[str] | None = None) -> int:
    determinism.apply()  # before any stage imports numpy, torch or jax
    use_compile_cache()
    from balanced_pi0 import config as _config

    args = build_parser().parse_args(argv)
    stage = next(s for s in STAGES if s.name == args.stage)
    try:
        overrides = _overrides(args.set)
        if stage.per_run and args.seed is not None:
            overrides["train.seed"] = args.seed
        params = _config.load(args.params, overrides)
        if stage.per_run and args.variant is not None:
            params = _config.for_run(params, args.variant, params.train.seed)
    except _config.ConfigError as e:
        print(f"bpi0 {stage.name}: {e}", file=sys.stderr)
        return 2
    module, func = stage.target.split(":")
    fn = getattr(importlib.import_module(module), func)
    kwargs = {
        dest: getattr(args, dest) for dest in (o.flag.lstrip("-").replace("-", "_") for o in stage.options)
    }
    try:
        fn(params, **kwargs)
    except InputError as e:
        print(f"bpi0 {stage.name}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
