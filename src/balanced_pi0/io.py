"""Files in and out, for every stage: atomic writes, JSON, params ``.npz``, ``split.json``.

Writing: every file goes to a temporary sibling and is renamed into place, so a
failed stage leaves no partial output; bytes depend only on content (JSON with
sorted keys, ``.npz`` with a fixed zip timestamp, PNG without its 'Software'
chunk). Reading: a missing, malformed or wrongly shaped input is an
``InputError`` whose message starts with the file, before anything is written.
``split.json`` has one strict reader (``read_split``) that every stage uses.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from balanced_pi0.errors import InputError


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
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


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = True) -> None:
    """Indented JSON; ``sort_keys=False`` keeps the order of a file whose bytes predate sorting."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def finite_floats(values) -> list[float]:
    """Plain floats for JSON (which has no NaN/inf: ``write_json`` refuses them)."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


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


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` to disk (before a directory is renamed into place)."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------
def read_json(path: str | Path, missing: str = "file not found") -> Any:
    """The parsed file; ``missing`` says what its absence means (``f"{path}: {missing}"``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None


def read_json_object(path: str | Path, holding: str, missing: str = "file not found") -> dict:
    """``read_json`` of a file that must hold a JSON object (``holding`` says of what)."""
    doc = read_json(path, missing)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object {holding}, got {type(doc).__name__}")
    return doc


# --------------------------------------------------------------------------------------
# split.json
# --------------------------------------------------------------------------------------
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
    split = read_json_object(path, "with 'train' and 'val'", "split file not found (written by `bpi0 fetch`)")
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


def load_train(dataset: str | Path, split: str | Path):
    """The training episodes' ``LowDim`` (statistics and filtering never see validation data);
    the loader rejects NaN/inf naming episode, frame and dim."""
    from balanced_pi0.data.lowdim import load_lowdim

    data = load_lowdim(Path(dataset))
    train = read_split(split, dataset_episodes=data.episodes)["train"]
    return data.select(train)


# --------------------------------------------------------------------------------------
# Params by openpi path (``.npz``): the backend-neutral form of a model
# --------------------------------------------------------------------------------------
def save_params_npz(path: Path, params: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` with sorted names and a fixed zip timestamp (``np.savez`` stamps the clock)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(params):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(params[name]), allow_pickle=False)


def load_params_npz(path: Path, what: str = "train.init_from") -> dict[str, np.ndarray]:
    """Params by openpi path from an ``.npz``; a missing, corrupt or non-finite file is an
    ``InputError`` naming the path (and ``what`` it was given as)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a directory, expected an .npz params file ({what})")
    if not path.is_file():
        raise InputError(f"{path}: params file not found ({what})")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not an .npz params file (no zip archive; truncated or another format)")
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise InputError(f"{path}: unreadable .npz params file ({type(e).__name__}: {e})") from None
    check_params(path, flat)
    return flat


def check_params(path: Path | str, flat: Mapping[str, Any]) -> None:
    """Every array numeric and finite; the message names the file and the first bad param."""
    if not flat:
        raise InputError(f"{path}: holds no params")
    for name in sorted(flat):
        a = np.asarray(flat[name])
        if a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
            raise InputError(f"{path}: param {name!r} has dtype {a.dtype}, not numeric")
        if a.dtype.kind != "f" and a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise InputError(f"{path}: param {name!r} holds non-finite values (NaN or inf)")
