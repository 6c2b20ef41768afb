"""``bpi0 fetch``: the pipeline's first stage.

Writes the stage's LeRobot v3.0 dataset from ``dataset.source`` (the embedded
MuJoCo task, a hub repository, a BEHAVIOR-1K 2025 folder, or Meta-World's scripted experts), checks it against
the action layout, and writes the seeded episode split. The dataset and the split
are staged next to their outputs and renamed into place, one after the other, only
once both exist and have passed the checks: a failure leaves the old pair as it was.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from balanced_pi0 import config as _config
from balanced_pi0 import io
from balanced_pi0.data import split as _split
from balanced_pi0.data.lowdim import load_lowdim
from balanced_pi0.data.writer import replace_dir, write_dataset


def fetch(params: _config.Params, out: str = "data/dataset", split: str = "data/split.json") -> None:
    cfg = params.dataset
    out = Path(out)
    staging = out.parent / f".{out.name}.fetch"
    start = time.perf_counter()
    split = Path(split)
    split_staging = split.with_name(f".{split.name}.fetch")
    try:
        _write_source(cfg, staging)
        low = load_lowdim(staging, action_dim=params.layout.build().real_action_dim)
        _split.write_split(
            split_staging, _split.make_split(low.episodes, cfg.split.val_fraction, cfg.split.seed)
        )
        io.read_split(split_staging, need_val=True, dataset_episodes=low.episodes)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        split_staging.unlink(missing_ok=True)
        raise
    replace_dir(staging, out)
    os.replace(split_staging, split)
    print(
        f"fetch: {cfg.source} -> {out}: {len(low.episodes)} episodes, {low.num_frames} frames "
        f"in {time.perf_counter() - start:.1f} s; split -> {split}"
    )


def _write_source(cfg: _config.DatasetConfig, dest: Path) -> None:
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    kind, _, arg = cfg.source.partition(":")
    if kind == "sim":
        from balanced_pi0.sim.recorder import generate_episodes

        sim = cfg.sim
        _write_expert_episodes(
            cfg, dest, generate_episodes(sim, cfg.cameras), sim.episodes, sim.fps, "r1pro_sim"
        )
    elif kind == "hub":
        from balanced_pi0.data.hub import download

        download(arg, dest)
    elif kind == "b1k":
        from balanced_pi0.data.b1k import convert

        convert(Path(arg), dest, cameras=cfg.cameras, repo_id=cfg.repo_id, resolution=cfg.b1k.resolution)
    elif kind == "metaworld":
        from balanced_pi0.sim import metaworld

        mw = cfg.metaworld
        tasks = metaworld.parse_tasks(arg)
        episodes = metaworld.generate_episodes(
            tasks, mw.episodes, mw.seed, cfg.cameras, mw.resolution, mw.max_steps
        )
        _write_expert_episodes(cfg, dest, episodes, mw.episodes, metaworld.FPS, "sawyer_metaworld")
    else:  # the config validator admits only the four kinds above
        raise AssertionError(cfg.source)


def _write_expert_episodes(
    cfg: _config.DatasetConfig, dest: Path, episodes, requested: int, fps: int, robot_type: str
) -> None:
    """Write a scripted expert's episodes through LeRobot's writer (which keeps only its successes)."""
    written = write_dataset(
        episodes, dest, repo_id=cfg.repo_id, fps=fps, cameras=cfg.cameras, robot_type=robot_type
    )
    if written < requested:
        print(f"fetch: dropped {requested - written} of {requested} episodes the expert failed")
