"""Record episodes into a LeRobot v3.0 dataset through LeRobot's own writer.

Storage choice: cameras are stored as **images** (PNG inside the data parquet),
not video. Here both are byte-stable once the two sources of run-to-run noise
below are pinned, but a PNG decodes in ~0.1 ms without seeking, which is what
lets the chunk loader decode only the frames it needs; AV1 video needs a
container open and seek per frame.

Run-to-run noise in LeRobot 0.6.1's output that this module removes:
- ``datasets`` stamps a fingerprint into each data parquet's schema metadata that
  hashes the absolute paths of the staged PNGs, so the bytes would depend on
  where the dataset was written. The files are rewritten without it (same rows,
  row groups and writer options as LeRobot's); readers do not use it.
- ``meta/stats.json`` lists features in set order (hash-randomised); it is
  rewritten with sorted keys, same values.

The dataset is written to a temporary sibling and renamed into place, so a
failure never leaves a partial dataset at ``root`` (``LeRobotDataset.create``
also refuses an existing root).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq

from balanced_pi0.errors import InputError

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
#: Per-episode facts the generator knows and LeRobot has no column for (seed, success, placement).
EPISODES_SIDECAR = Path("meta/bpi0_episodes.json")


class EpisodeLike(Protocol):
    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict[str, np.ndarray]


def features(state_dim: int, action_dim: int, cameras: Sequence[str], resolution: tuple[int, int]) -> dict:
    h, w = resolution
    out = {
        STATE_KEY: {"dtype": "float32", "shape": (state_dim,), "names": None},
        ACTION_KEY: {"dtype": "float32", "shape": (action_dim,), "names": None},
    }
    for cam in cameras:
        out[IMAGE_PREFIX + cam] = {
            "dtype": "image",
            "shape": (h, w, 3),
            "names": ["height", "width", "channels"],
        }
    return out


def write_dataset(
    episodes: Iterable[EpisodeLike],
    root: str | Path,
    *,
    repo_id: str,
    fps: int,
    cameras: Sequence[str],
    robot_type: str | None = None,
    keep_failed: bool = False,
) -> int:
    """Write ``episodes`` to a new dataset at ``root`` (replaced if it exists); returns episodes written.

    Episodes with ``success == False`` are dropped unless ``keep_failed``: a
    policy should not imitate the expert's failures.
    """
    root = Path(root)
    with _staging(root) as tmp:
        dataset = None
        sidecar = []
        try:
            for i, ep in enumerate(episodes):
                _validate(ep, i, cameras)
                if not keep_failed and not getattr(ep, "success", True):
                    continue
                if dataset is None:
                    shapes = _shapes(ep, cameras)
                    res = ep.images[cameras[0]].shape[1:3] if cameras else (0, 0)
                    feats = features(ep.state.shape[1], ep.action.shape[1], cameras, res)
                    dataset = _create(tmp, repo_id, fps, feats, robot_type)
                elif _shapes(ep, cameras) != shapes:
                    raise InputError(
                        f"episode {i}: shapes {_shapes(ep, cameras)} differ from the first {shapes}"
                    )
                _add_episode(dataset, ep, cameras)
                sidecar.append(_episode_facts(len(sidecar), i, ep))
        finally:
            # Close LeRobot's parquet writers now, or their finaliser writes into the
            # staging folder after it has been removed.
            if dataset is not None:
                dataset.finalize()
        if dataset is None:
            raise InputError(f"{root}: no episodes to write")
        # LeRobot's scratch folder for PNGs before they are embedded; empty by now.
        shutil.rmtree(tmp / "images", ignore_errors=True)
        _drop_fingerprints(tmp)
        _canonicalise_stats(tmp)
        (tmp / EPISODES_SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    return len(sidecar)


def _create(tmp: Path, repo_id: str, fps: int, feats: dict, robot_type: str | None):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset.create(
        repo_id,
        fps=fps,
        features=feats,
        root=tmp,
        robot_type=robot_type,
        use_videos=False,
        video_backend="pyav",
    )


def _add_episode(dataset, ep: EpisodeLike, cameras: Sequence[str]) -> None:
    for t in range(len(ep.action)):
        frame = {STATE_KEY: ep.state[t], ACTION_KEY: ep.action[t], "task": ep.task}
        for cam in cameras:
            frame[IMAGE_PREFIX + cam] = ep.images[cam][t]
        dataset.add_frame(frame)
    dataset.save_episode()


def _episode_facts(episode_index: int, source_index: int, ep) -> dict:
    facts = {"episode_index": episode_index, "source_index": source_index, "length": len(ep.action)}
    for name in ("seed", "success", "arm_heavy", "source_episode_index"):
        value = getattr(ep, name, None)
        if value is not None:
            facts[name] = bool(value) if isinstance(value, bool | np.bool_) else int(value)
    return facts


def _shapes(ep: EpisodeLike, cameras: Sequence[str]) -> dict:
    """Per-frame shapes, which every episode of a dataset must share."""
    out = {STATE_KEY: ep.state.shape[1:], ACTION_KEY: ep.action.shape[1:]}
    return out | {cam: ep.images[cam].shape[1:] for cam in cameras}


def _validate(ep: EpisodeLike, i: int, cameras: Sequence[str]) -> None:
    state, action = np.asarray(ep.state), np.asarray(ep.action)
    if action.ndim != 2 or len(action) == 0:
        raise InputError(f"episode {i}: action must be [T>0, D], got shape {list(action.shape)}")
    if state.ndim != 2 or len(state) != len(action):
        raise InputError(
            f"episode {i}: state shape {list(state.shape)} does not match action {list(action.shape)}"
        )
    for key, values in ((STATE_KEY, state), (ACTION_KEY, action)):
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            raise InputError(f"episode {i}: {key!r} is not finite at frame {bad[0][0]} dim {bad[0][1]}")
    for cam in cameras:
        img = ep.images.get(cam)
        if img is None:
            raise InputError(f"episode {i}: no images for camera {cam!r}; has {sorted(ep.images)}")
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != len(action) or img.shape[3] != 3:
            raise InputError(
                f"episode {i}: camera {cam!r} images must be uint8 [T={len(action)},H,W,3], "
                f"got {img.dtype} {list(img.shape)}"
            )


def _drop_fingerprints(root: Path) -> None:
    for path in sorted((root / "data").glob("*/*.parquet")):
        source = pq.ParquetFile(path)
        meta = dict(source.schema_arrow.metadata or {})
        hf = json.loads(meta.get(b"huggingface", b"{}"))
        if "fingerprint" not in hf:
            continue
        hf.pop("fingerprint")
        meta[b"huggingface"] = json.dumps(hf).encode()
        schema = source.schema_arrow.with_metadata(meta)
        tmp = path.with_name(path.name + ".partial")
        # LeRobot's own writer options (dataset_writer.py), one row group per episode as before.
        with pq.ParquetWriter(tmp, schema=schema, compression="snappy", use_dictionary=True) as out:
            for i in range(source.num_row_groups):
                out.write_table(source.read_row_group(i).replace_schema_metadata(meta))
        source.close()
        tmp.replace(path)


def _canonicalise_stats(root: Path) -> None:
    path = root / "meta/stats.json"
    if path.exists():
        stats = json.loads(path.read_text())
        path.write_text(json.dumps(stats, indent=4, sort_keys=True, ensure_ascii=False))


@contextmanager
def _staging(root: Path):
    """Yield a fresh temporary sibling of ``root``; on success it replaces ``root``."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, root)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``, replacing what was there."""
    old = dst.parent / f".{dst.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
