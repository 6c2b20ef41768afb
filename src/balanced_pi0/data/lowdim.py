"""The low-dimensional columns of a LeRobot v3.0 dataset, loaded once into NumPy.

Statistics, filtering and the chunk loader all need every state and action row;
reading them through ``LeRobotDataset.__getitem__`` decodes images per row and is
orders of magnitude slower. The v3.0 files are read directly with json and
pyarrow (column by column, never touching the network): importing LeRobot's
reader pulls in torch, ~30 s per process on a shared 2-core machine, which every
stage would pay. The tests hold the result equal to ``LeRobotDataset``'s items.
The result is validated once so that later stages can trust it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from balanced_pi0.errors import InputError

STATE_KEY = "observation.state"
ACTION_KEY = "action"
INFO_FILE = Path("meta/info.json")
TASKS_FILE = Path("meta/tasks.parquet")
_ROW_COLUMNS = ("episode_index", "frame_index", "index", "task_index")


@dataclass(frozen=True)
class LowDim:
    """State and action rows sorted by (episode, frame), with episode boundaries.

    ``tasks`` holds one prompt per episode (aligned with ``episodes``);
    ``task_index`` and ``task_names`` give the per-row prompt, as LeRobot's ``task``.
    ``index`` is LeRobot's absolute frame index (the ``index`` column).
    """

    state: np.ndarray  # float32 [N, Ds]
    action: np.ndarray  # float32 [N, Da]
    episode_index: np.ndarray  # int64 [N]
    frame_index: np.ndarray  # int64 [N]
    index: np.ndarray  # int64 [N]
    task_index: np.ndarray  # int64 [N]
    episodes: np.ndarray  # int64 [E], sorted unique
    ep_start: np.ndarray  # int64 [E], row range start
    ep_stop: np.ndarray  # int64 [E], row range stop (exclusive)
    fps: float
    tasks: list[str]  # [E]
    task_names: list[str]  # by task_index

    @property
    def num_frames(self) -> int:
        return int(self.state.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.ep_stop - self.ep_start

    def rows_of(self, episode_id: int) -> slice:
        pos = _positions(self.episodes, [episode_id])[0]
        return slice(int(self.ep_start[pos]), int(self.ep_stop[pos]))

    def select(self, episode_ids) -> LowDim:
        """The same columns restricted to ``episode_ids`` (any order; the result is sorted)."""
        ids = np.unique(np.asarray(list(episode_ids), dtype=np.int64))
        pos = _positions(self.episodes, ids)
        lengths = self.lengths[pos]
        rows = np.concatenate([np.arange(self.ep_start[p], self.ep_stop[p]) for p in pos]) if len(pos) else []
        rows = np.asarray(rows, dtype=np.int64)
        stop = np.cumsum(lengths)
        return replace(
            self,
            state=self.state[rows],
            action=self.action[rows],
            episode_index=self.episode_index[rows],
            frame_index=self.frame_index[rows],
            index=self.index[rows],
            task_index=self.task_index[rows],
            episodes=ids,
            ep_start=stop - lengths,
            ep_stop=stop,
            tasks=[self.tasks[p] for p in pos],
        )


def _positions(episodes: np.ndarray, ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    pos = np.searchsorted(episodes, ids)
    bad = (pos >= len(episodes)) | (episodes[np.minimum(pos, len(episodes) - 1)] != ids)
    if np.any(bad):
        raise InputError(
            f"episode(s) {ids[bad].tolist()} not in the dataset (it has {len(episodes)} episodes)"
        )
    return pos


def load_lowdim(root: str | Path, *, action_dim: int | None = None) -> LowDim:
    """Read and validate state, action and episode structure of the dataset at ``root``.

    ``action_dim``, when given, is the width the action layout expects.
    """
    root = Path(root)
    info = read_info(root)
    features = info["features"]
    for key in (STATE_KEY, ACTION_KEY):
        if key not in features:
            raise InputError(f"{root / INFO_FILE}: missing feature {key!r}; features are {sorted(features)}")
    if action_dim is not None and tuple(features[ACTION_KEY]["shape"]) != (action_dim,):
        raise InputError(
            f"{root / INFO_FILE}: feature {ACTION_KEY!r} has shape {list(features[ACTION_KEY]['shape'])}, "
            f"the action layout expects [{action_dim}]"
        )
    widths = {key: _declared_width(root, features, key) for key in (STATE_KEY, ACTION_KEY)}
    cols = _read_columns(root, (STATE_KEY, ACTION_KEY, *_ROW_COLUMNS), widths)
    order = np.lexsort((cols["frame_index"], cols["episode_index"]))
    cols = {k: v[order] for k, v in cols.items()}
    episodes, ep_start, counts = np.unique(cols["episode_index"], return_index=True, return_counts=True)
    _check_episodes(root, info["total_episodes"], episodes, counts)
    for key in (STATE_KEY, ACTION_KEY):
        _check_finite(root, key, cols[key], cols["episode_index"], cols["frame_index"])
    task_names = _load_task_names(root)
    task_index = cols["task_index"]
    if len(task_index) and (task_index.min() < 0 or task_index.max() >= len(task_names)):
        raise InputError(f"{root / TASKS_FILE}: task_index {int(task_index.max())} has no task")
    ep_start = ep_start.astype(np.int64)
    return LowDim(
        state=cols[STATE_KEY],
        action=cols[ACTION_KEY],
        episode_index=cols["episode_index"],
        frame_index=cols["frame_index"],
        index=cols["index"],
        task_index=task_index,
        episodes=episodes.astype(np.int64),
        ep_start=ep_start,
        ep_stop=ep_start + counts.astype(np.int64),
        fps=float(info["fps"]),
        tasks=[task_names[i] for i in task_index[ep_start]],
        task_names=task_names,
    )


def read_info(root: Path) -> dict:
    """``meta/info.json`` of a v3.0 dataset, checked for the keys this package reads."""
    path = root / INFO_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; {root} is not a LeRobot dataset root")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    missing = [k for k in ("codebase_version", "fps", "features", "total_episodes") if k not in info]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}")
    if not str(info["codebase_version"]).startswith("v3."):
        raise InputError(f"{path}: codebase_version {info['codebase_version']!r}, expected v3.x")
    return info


def read_parquet(path: Path, columns: list[str] | None = None, *, schema_only: bool = False):
    """A parquet table (or its schema); a truncated or foreign file is an ``InputError`` naming it
    (pyarrow's own errors do not say which file)."""
    try:
        return pq.read_schema(path) if schema_only else pq.read_table(path, columns=columns)
    except (pa.lib.ArrowException, OSError) as e:
        raise InputError(f"{path}: unreadable parquet file ({type(e).__name__}: {e})") from None


def _load_task_names(root: Path) -> list[str]:
    path = root / TASKS_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found")
    table = read_parquet(path)
    if not {"task", "task_index"} <= set(table.column_names):
        raise InputError(f"{path}: expected columns 'task' and 'task_index', got {table.column_names}")
    names = [""] * table.num_rows
    for name, idx in zip(table["task"].to_pylist(), table["task_index"].to_pylist(), strict=True):
        names[int(idx)] = str(name)
    return names


def data_files(root: Path) -> list[Path]:
    """The data parquet files in LeRobot's own order (``data/chunk-*/file-*.parquet``, sorted)."""
    paths = sorted((root / "data").glob("*/*.parquet"))
    if not paths:
        raise InputError(f"{root / 'data'}: no parquet files")
    return paths


def _declared_width(root: Path, features: dict, key: str) -> int:
    shape = features[key].get("shape") if isinstance(features[key], dict) else None
    if not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int):
        raise InputError(f"{root / INFO_FILE}: feature {key!r} needs a one-axis 'shape', got {shape!r}")
    return shape[0]


def _read_columns(root: Path, names: tuple[str, ...], widths: dict[str, int]) -> dict[str, np.ndarray]:
    """The columns of every data file; a vector column whose width is not info.json's is named."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for path in data_files(root):
        schema = read_parquet(path, schema_only=True)
        missing = [n for n in names if n not in schema.names]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}")
        table = read_parquet(path, columns=list(names))
        for n in names:
            values = _to_numpy(table.column(n), n, path)
            if n in widths and len(values) and values.shape[1] != widths[n]:
                raise InputError(
                    f"{path}: column {n!r} is {values.shape[1]} wide, {root / INFO_FILE} says {widths[n]}"
                )
            parts[n].append(values)
    return {n: np.concatenate(v) for n, v in parts.items()}


def _to_numpy(column, name: str, path: Path) -> np.ndarray:
    if name in _ROW_COLUMNS:
        return column.to_numpy().astype(np.int64)
    # fixed_size_list<float>[D]: flatten the chunks, then reshape; nulls are a bad row.
    if column.null_count:
        raise InputError(f"{path}: column {name!r} has {column.null_count} null rows")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    width = flat.size // max(len(column), 1)
    return np.ascontiguousarray(flat.reshape(len(column), width), dtype=np.float32)


def _check_episodes(root: Path, total_episodes: int, episodes: np.ndarray, counts: np.ndarray) -> None:
    if total_episodes == 0 or len(episodes) == 0:
        raise InputError(f"{root}: the dataset has no frames")
    lengths = _episode_lengths(root)
    for ep, length in lengths.items():
        if length == 0:
            raise InputError(f"{root}: episode {ep} is empty (length 0 in meta/episodes)")
    have = dict(zip(episodes.tolist(), counts.tolist(), strict=True))
    for ep, length in lengths.items():
        if have.get(ep, 0) != length:
            raise InputError(
                f"{root}: episode {ep} has {have.get(ep, 0)} data rows but meta/episodes says {length}"
            )


def _episode_lengths(root: Path) -> dict[int, int]:
    paths = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not paths:
        raise InputError(f"{root / 'meta/episodes'}: no episode metadata parquet files")
    out: dict[int, int] = {}
    for path in paths:
        t = read_parquet(path, columns=["episode_index", "length"])
        out.update(zip(t["episode_index"].to_pylist(), t["length"].to_pylist(), strict=True))
    return out


def _check_finite(root: Path, key: str, values: np.ndarray, episode: np.ndarray, frame: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row, dim = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"{root}: {key!r} is {values[row, dim]} at episode {int(episode[row])} frame {int(frame[row])} "
            f"dim {dim} ({int(bad.sum())} non-finite values in all)"
        )
