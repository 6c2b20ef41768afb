"""``b1k:<path>``: convert a BEHAVIOR-1K 2025-challenge folder to a small LeRobot v3.0 dataset.

The challenge data (``behavior-1k/2025-challenge-demos``) is LeRobot v2.1 with
its own layout: one parquet per episode at
``data/task-XXXX/episode_XXXXXXXX.parquet`` (chunk = task id), episode ids that
are not contiguous (``task * 10000 + 10 * k``), ``meta/episodes.jsonl`` and
``meta/tasks.jsonl``, and one mp4 per episode and camera under
``videos/task-XXXX/observation.images.rgb.<cam>/``. Cameras are 720x720 (head)
and 480x480 (wrists) at 30 fps.

The conversion keeps the 23-D action as is, reduces the 256-D proprioception to
the 23-D state in the *action* layout (see ``PROPRIO_23``), decodes the chosen
cameras and resizes them to ``resolution`` (area filter), and writes everything
through the same LeRobot writer as the embedded task. Episodes are renumbered
0..E-1 in source order; ``meta/bpi0_episodes.json`` keeps the source ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from balanced_pi0.data.writer import write_dataset
from balanced_pi0.errors import InputError

#: 256-D R1Pro proprioception -> 23-D state in the action layout. Index ranges as
#: used by public B1K readers (RLinf's openpi BEHAVIOR state reader): base
#: velocity 253:256, torso 236:240, left arm 158:165, right arm 197:204; each
#: gripper is the sum of its two finger joints (193:195, 232:234).
PROPRIO_23 = (
    ("take", slice(253, 256)),
    ("take", slice(236, 240)),
    ("take", slice(158, 165)),
    ("sum1", slice(193, 195)),
    ("take", slice(197, 204)),
    ("sum1", slice(232, 234)),
)
VIDEO_KEY = "observation.images.rgb.{cam}"


@dataclass(frozen=True)
class B1KEpisode:
    task: str
    state: np.ndarray
    action: np.ndarray
    images: dict[str, np.ndarray]
    source_episode_index: int


def convert(src: Path, dest: Path, *, cameras: Sequence[str], repo_id: str, resolution: int) -> int:
    """Write the B1K folder ``src`` as a LeRobot v3.0 dataset at ``dest``; returns episodes written."""
    info = _read_info(src)
    return write_dataset(
        read_episodes(src, info, cameras, resolution),
        dest,
        repo_id=repo_id,
        fps=int(info["fps"]),
        cameras=cameras,
        robot_type=info.get("robot_type"),
        keep_failed=True,
    )


def read_episodes(src: Path, info: dict, cameras: Sequence[str], resolution: int) -> Iterator[B1KEpisode]:
    tasks = {r["task_index"]: r["task"] for r in _jsonl(src / "meta/tasks.jsonl")}
    episodes = sorted(_jsonl(src / "meta/episodes.jsonl"), key=lambda r: r["episode_index"])
    if not episodes:
        raise InputError(f"{src / 'meta/episodes.jsonl'}: no episodes")
    chunks = int(info.get("chunks_size", 10000))
    for record in episodes:
        ep = int(record["episode_index"])
        fmt = {"episode_chunk": ep // chunks, "episode_index": ep}
        path = src / info["data_path"].format(**fmt)
        table = _read_parquet(path, ep)
        action = _matrix(table, "action", path).astype(np.float32)
        if len(action) == 0 or len(action) != record.get("length", len(action)):
            raise InputError(
                f"{path}: episode {ep} has {len(action)} frames, episodes.jsonl says {record.get('length')}"
            )
        state = _reduce_state(_matrix(table, "observation.state", path), action.shape[1], path)
        task_index = table.column("task_index").to_numpy() if "task_index" in table.column_names else None
        task = tasks.get(int(task_index[0])) if task_index is not None else None
        task = task or (record.get("tasks") or [""])[0]
        images = {}
        for cam in cameras:
            key = VIDEO_KEY.format(cam=cam)
            if key not in info["features"]:
                raise InputError(f"{src / 'meta/info.json'}: no camera feature {key!r}")
            video = src / info["video_path"].format(video_key=key, **fmt)
            images[cam] = decode_resized(video, len(action), resolution, ep)
        yield B1KEpisode(task, state, action, images, ep)


def decode_resized(path: Path, num_frames: int, resolution: int, episode: int) -> np.ndarray:
    """All frames of ``path`` as uint8 [T, res, res, 3], area-resized; T must equal ``num_frames``."""
    import av

    if not path.is_file():
        raise InputError(f"{path}: video of episode {episode} not found")
    out = np.empty((num_frames, resolution, resolution, 3), dtype=np.uint8)
    n = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if n == num_frames:
                n += 1
                break
            out[n] = frame.reformat(
                width=resolution, height=resolution, format="rgb24", interpolation="AREA"
            ).to_ndarray()
            n += 1
    if n != num_frames:
        raise InputError(
            f"{path}: episode {episode} has {num_frames} data frames but the video has {'more' if n > num_frames else n}"
        )
    return out


def _reduce_state(state: np.ndarray, action_dim: int, path: Path) -> np.ndarray:
    if state.shape[1] == action_dim:  # already in the action layout
        return state.astype(np.float32)
    if state.shape[1] != 256:
        raise InputError(
            f"{path}: observation.state has {state.shape[1]} dims; expected 256 (R1Pro) or {action_dim}"
        )
    parts = [
        state[:, s] if how != "sum1" else state[:, s].sum(axis=1, keepdims=True) for how, s in PROPRIO_23
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _read_info(src: Path) -> dict:
    path = src / "meta/info.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; {src} is not a BEHAVIOR-1K (LeRobot v2.1) dataset")
    info = json.loads(path.read_text())
    if not str(info.get("codebase_version", "")).startswith("v2"):
        raise InputError(
            f"{path}: codebase_version {info.get('codebase_version')!r}, expected v2.1 (B1K layout)"
        )
    for key in ("fps", "data_path", "video_path", "features"):
        if key not in info:
            raise InputError(f"{path}: missing key {key!r}")
    for key in ("action", "observation.state"):
        if key not in info["features"]:
            raise InputError(f"{path}: missing feature {key!r}")
    return info


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path}: not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_parquet(path: Path, episode: int):
    if not path.is_file():
        raise InputError(f"{path}: data of episode {episode} not found")
    return pq.read_table(path)


def _matrix(table, key: str, path: Path) -> np.ndarray:
    if key not in table.column_names:
        raise InputError(f"{path}: missing column {key!r}")
    return np.asarray(table.column(key).to_pylist(), dtype=np.float64).reshape(table.num_rows, -1)
