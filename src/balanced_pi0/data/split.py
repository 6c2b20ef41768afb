"""The episode-level train/validation split (``split.json``), seeded.

Splitting by episode, not by frame, keeps neighbouring frames of one episode out
of both sides. Statistics and filtering read the training episodes only;
evaluation reads the validation episodes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from balanced_pi0.errors import InputError

_KEYS = ("train", "val", "seed", "val_fraction", "num_episodes")


def make_split(episode_ids: Sequence[int], val_fraction: float, seed: int) -> dict:
    """``{"train", "val", "seed", "val_fraction", "num_episodes"}``; both sides non-empty."""
    ids = np.unique(np.asarray(episode_ids, dtype=np.int64))
    if len(ids) < 2:
        raise InputError(f"split: need at least 2 episodes for a train/val split, got {len(ids)}")
    n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
    perm = np.random.default_rng(seed).permutation(ids)
    return {
        "train": sorted(int(i) for i in perm[n_val:]),
        "val": sorted(int(i) for i in perm[:n_val]),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "num_episodes": len(ids),
    }


def write_split(path: str | Path, split: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(split, indent=2) + "\n")
    os.replace(tmp, path)


def read_split(path: str | Path) -> dict:
    """Load and check a split file: keys present, ids sorted, disjoint and counted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found (written by `bpi0 fetch`)")
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    missing = [k for k in _KEYS if k not in split]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}")
    for side in ("train", "val"):
        ids = split[side]
        if not ids or ids != sorted(set(ids)):
            raise InputError(f"{path}: {side!r} must be a non-empty sorted list of unique episode ids")
    if set(split["train"]) & set(split["val"]):
        raise InputError(
            f"{path}: episodes {sorted(set(split['train']) & set(split['val']))} in train and val"
        )
    if len(split["train"]) + len(split["val"]) != split["num_episodes"]:
        raise InputError(f"{path}: train + val do not add up to num_episodes {split['num_episodes']}")
    return split
