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


def read_split(
    path: str | Path, *, need_val: bool = False, dataset_episodes: Sequence[int] | None = None
) -> dict:
    """The one reader of ``split.json`` for every stage; every message names the file.

    Checks: a JSON object whose ``train`` and ``val`` are lists of unique episode ids, disjoint (an
    overlap would score episodes the model trained on), ``train`` non-empty, ``val`` non-empty when
    ``need_val`` (evaluation), ``num_episodes`` (when present) their total, and, given the dataset's
    episode ids, every listed episode present in the dataset. Lists come back sorted.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found (written by `bpi0 fetch`)")
    try:
        split = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(split, dict):
        raise InputError(f"{path}: expected a JSON object with 'train' and 'val', got {type(split).__name__}")
    out = dict(split)
    for side in ("train", "val"):
        out[side] = _episode_ids(path, split, side)
    if not out["train"]:
        raise InputError(f"{path}: 'train' lists no episode")
    if need_val and not out["val"]:
        raise InputError(f"{path}: 'val' lists no episode (evaluation needs validation episodes)")
    both = sorted(set(out["train"]) & set(out["val"]))
    if both:
        raise InputError(f"{path}: episodes {both[:10]} are in both train and val")
    total = len(out["train"]) + len(out["val"])
    if "num_episodes" in split and split["num_episodes"] != total:
        raise InputError(
            f"{path}: train + val ({total}) do not add up to num_episodes {split['num_episodes']}"
        )
    if dataset_episodes is not None:
        absent = sorted(set(out["train"]).union(out["val"]) - {int(e) for e in dataset_episodes})
        if absent:
            raise InputError(f"{path}: episodes {absent[:10]} are not in the dataset")
    return out


def _episode_ids(path: Path, split: dict, side: str) -> list[int]:
    if side not in split:
        raise InputError(f"{path}: missing key {side!r}")
    ids = split[side]
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
    ):
        raise InputError(f"{path}: {side!r} must be a list of episode ids (non-negative integers)")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"{path}: {side!r} lists episodes {dup[:10]} more than once")
    return sorted(ids)
