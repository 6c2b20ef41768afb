"""The episode-level train/validation split (``split.json``), seeded.

Splitting by episode, not by frame, keeps neighbouring frames of one episode out
of both sides. Statistics and filtering read the training episodes only;
evaluation reads the validation episodes, every stage through the one strict
reader, ``balanced_pi0.io.read_split``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from balanced_pi0 import io
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
    """``split.json`` in ``make_split``'s key order (read back by ``balanced_pi0.io.read_split``)."""
    io.write_json(path, split, sort_keys=False)
