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


def read_split(path: str | Path, **checks) -> dict:
    """``split.json`` through the one strict reader (``data.split.read_split``)."""
    from balanced_pi0.data.split import read_split as strict

    return strict(path, **checks)


def load_train(dataset: str | Path, split: str | Path):
    """The training episodes' ``LowDim``; the loader rejects NaN/inf naming episode, frame and dim."""
    from balanced_pi0.data.lowdim import load_lowdim

    data = load_lowdim(Path(dataset))
    train = read_split(split, dataset_episodes=data.episodes)["train"]
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
