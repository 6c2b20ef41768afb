"""Inputs and outputs shared by the preparation stages.

Reading: the low-dimensional columns of a LeRobot dataset restricted to the
training episodes of ``split.json`` (statistics and filtering never see validation
data). Writing: every file goes to a temporary sibling and is renamed into place,
so a failed stage leaves no partial output; JSON and PNG bytes depend only on
their content (sorted keys, no timestamps, PNG metadata stripped).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from balanced_pi0.errors import InputError


def read_split(path: str | Path) -> dict:
    """``split.json``: ``{"train": [ids], "val": [ids], ...}``, validated."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: split file not found (written by `bpi0 fetch`)")
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    for key in ("train", "val"):
        ids = split.get(key) if isinstance(split, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InputError(f"{path}: key {key!r} must be a list of episode ids")
    if not split["train"]:
        raise InputError(f"{path}: 'train' lists no episode")
    return split


def load_train(dataset: str | Path, split: str | Path):
    """The training episodes' ``LowDim``; the loader rejects NaN/inf naming episode, frame and dim."""
    from balanced_pi0.data.lowdim import load_lowdim

    train = read_split(split)["train"]
    data = load_lowdim(Path(dataset))
    missing = sorted(set(train) - {int(e) for e in data.episodes})
    if missing:
        raise InputError(f"{split}: train episodes {missing[:10]} are not in the dataset {dataset}")
    return data.select(train)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def new_figure(width: float = 6.4, height: float = 4.0, layout: str | None = "constrained"):
    """A matplotlib Figure on the Agg canvas (no pyplot global state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> None:
    """PNG whose bytes depend only on the drawing: the 'Software' text chunk is dropped."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def finite_floats(values) -> list[float]:
    """Plain floats for JSON (which has no NaN/inf: ``write_json`` refuses them)."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]
