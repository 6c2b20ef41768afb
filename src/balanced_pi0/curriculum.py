"""The curriculum: which episodes each training step reads.

A phase is a run of steps over one episode set (``train``, or ``arm_heavy``, the
arm-heavy episodes of ``bpi0 filter`` within the training side). Each phase has its
own loader, seeded from ``(seed, phase)``, whose position a checkpoint saves: a
resumed run reads the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from balanced_pi0 import config as _config
from balanced_pi0 import io
from balanced_pi0.errors import InputError


@dataclass(frozen=True)
class Phase:
    index: int
    start: int  # first global step
    stop: int  # exclusive
    source: str  # "train" or "arm_heavy"
    episodes: np.ndarray  # sorted episode ids


def load_episode_sets(
    split_path: str | Path,
    arm_heavy_path: str | Path | None,
    dataset_episodes: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """``train`` from split.json (the strict reader: disjoint from val, every episode in the
    dataset when its ids are given); ``arm_heavy`` = arm_heavy.json ∩ train (validation never leaks in)."""
    split = io.read_split(split_path, dataset_episodes=dataset_episodes)
    sets = {"train": np.asarray(split["train"], dtype=np.int64)}
    if arm_heavy_path is not None and Path(arm_heavy_path).exists():
        raw = io.read_json(arm_heavy_path)
        ids = raw.get("episodes") if isinstance(raw, dict) else raw
        if ids is None:
            raise InputError(f"{arm_heavy_path}: no 'episodes' key")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InputError(f"{arm_heavy_path}: 'episodes' must be a list of episode ids")
        sets["arm_heavy"] = np.intersect1d(np.asarray(ids, dtype=np.int64), sets["train"])
    return sets


def build_curriculum(
    phases: Sequence[_config.PhaseConfig], episode_sets: Mapping[str, np.ndarray]
) -> list[Phase]:
    if not phases:  # the config rejects it too; an empty loop would export the untrained init
        raise InputError("train.curriculum: no phase (at least one with steps > 0 is needed)")
    out, start = [], 0
    for i, p in enumerate(phases):
        if p.episodes not in episode_sets:
            raise InputError(
                f"train.curriculum[{i}].episodes: {p.episodes!r} needs arm_heavy.json (run `bpi0 filter`)"
            )
        ids = episode_sets[p.episodes]
        if len(ids) == 0:
            raise InputError(
                f"train.curriculum[{i}].episodes: the {p.episodes!r} set has no training episode"
            )
        out.append(Phase(i, start, start + p.steps, p.episodes, ids))
        start += p.steps
    return out


def phase_at(curriculum: Sequence[Phase], step: int) -> Phase:
    for p in curriculum:
        if p.start <= step < p.stop:
            return p
    raise IndexError(f"step {step} is past the curriculum's {curriculum[-1].stop} steps")


class Loader(Protocol):
    """``data.loader.ChunkLoader``'s resumable view: endless batches and a position."""

    def batches(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


LoaderFactory = Callable[[np.ndarray, int], Loader]


class CurriculumBatches:
    """One resumable loader per phase (seeded ``(seed, phase)``); ``batch(step)`` reads the step's phase."""

    def __init__(self, curriculum: Sequence[Phase], make_loader: LoaderFactory, seed: int):
        self.curriculum = list(curriculum)
        self._make, self._seed = make_loader, seed
        self._loaders: dict[int, Loader] = {}
        self._iters: dict[int, Iterator[dict]] = {}

    def _loader(self, phase: Phase) -> Loader:
        if phase.index not in self._loaders:
            seed = int(np.random.SeedSequence((self._seed, phase.index)).generate_state(1)[0])
            self._loaders[phase.index] = self._make(phase.episodes, seed)
        return self._loaders[phase.index]

    def prepare(self) -> None:
        """Build every phase's loader now, so that a data error surfaces before any output is
        written (each loader is seeded by its phase alone: building it early changes no batch)."""
        for phase in self.curriculum:
            self._loader(phase)

    def batch(self, step: int) -> tuple[Phase, dict]:
        phase = phase_at(self.curriculum, step)
        loader = self._loader(phase)
        if phase.index not in self._iters:
            self._iters[phase.index] = loader.batches()
        return phase, next(self._iters[phase.index])

    def state_dict(self) -> dict:
        return {str(i): ld.state_dict() for i, ld in sorted(self._loaders.items())}

    def load_state_dict(self, state: Mapping[str, dict]) -> None:
        for key, st in state.items():
            self._loader(self.curriculum[int(key)]).load_state_dict(st)
            self._iters.pop(int(key), None)
