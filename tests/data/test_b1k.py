"""A tiny replica of the BEHAVIOR-1K 2025-challenge layout (LeRobot v2.1), converted to v3.0."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from balanced_pi0 import config
from balanced_pi0.data.b1k import convert
from balanced_pi0.data.fetch import fetch
from balanced_pi0.data.loader import ChunkLoader
from balanced_pi0.data.lowdim import load_lowdim
from balanced_pi0.errors import InputError

CAMS = ("head", "left_wrist", "right_wrist")
SIZES = {"head": 48, "left_wrist": 32, "right_wrist": 32}  # B1K: 720 head, 480 wrists
EPISODES = {10: 5, 20: 7, 10010: 4}  # task * 10000 + 10 * k, not contiguous
TASKS = {0: "turning on radio", 1: "picking up trash"}


def _colour(ep: int, t: int, c: int) -> np.ndarray:
    return np.array([(40 * t + 17 * c) % 200 + 20, (ep // 10) % 200 + 20, 120], dtype=np.uint8)


def _write_video(path, frames):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "2"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_replica(root):
    features = {
        "action": {"dtype": "float32", "shape": [23], "names": None},
        "observation.state": {"dtype": "float32", "shape": [256], "names": None},
        **{
            f"observation.images.rgb.{c}": {"dtype": "video", "shape": [SIZES[c], SIZES[c], 3], "names": None}
            for c in CAMS
        },
    }
    info = {
        "codebase_version": "v2.1",
        "robot_type": "R1Pro",
        "fps": 30,
        "chunks_size": 10000,
        "total_episodes": len(EPISODES),
        "data_path": "data/task-{episode_chunk:04d}/episode_{episode_index:08d}.parquet",
        "video_path": "videos/task-{episode_chunk:04d}/{video_key}/episode_{episode_index:08d}.mp4",
        "features": features,
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": k, "task": v}) + "\n" for k, v in TASKS.items())
    )
    (root / "meta/episodes.jsonl").write_text(
        "".join(
            json.dumps({"episode_index": e, "tasks": [TASKS[e // 10000]], "length": n}) + "\n"
            for e, n in EPISODES.items()
        )
    )
    for ep, n in EPISODES.items():
        task = ep // 10000
        state = np.zeros((n, 256), dtype=np.float32)
        state[:, 253:256] = ep + 0.5  # base velocity
        state[:, 158:165] = np.arange(n)[:, None]  # left arm
        state[:, 193:195] = 0.25  # left fingers -> gripper 0.5
        action = (ep + np.arange(n)[:, None] + np.arange(23)[None] / 100).astype(np.float32)
        table = pa.table(
            {
                "action": list(action),
                "observation.state": list(state),
                "timestamp": np.arange(n) / 30.0,
                "frame_index": np.arange(n),
                "episode_index": np.full(n, ep),
                "index": np.arange(n),
                "task_index": np.full(n, task),
            }
        )
        path = root / f"data/task-{task:04d}/episode_{ep:08d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for c, cam in enumerate(CAMS):
            s = SIZES[cam]
            frames = np.stack([np.broadcast_to(_colour(ep, t, c), (s, s, 3)) for t in range(n)])
            _write_video(
                root / f"videos/task-{task:04d}/observation.images.rgb.{cam}/episode_{ep:08d}.mp4", frames
            )
    return root


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_replica(tmp_path_factory.mktemp("b1k") / "2025-challenge-demos")


def test_converts_to_v3_with_small_cameras(replica, tmp_path):
    out = tmp_path / "ds"
    assert convert(replica, out, cameras=CAMS, repo_id="test/b1k", resolution=16) == 3
    low = load_lowdim(out, action_dim=23)
    ids = sorted(EPISODES)
    np.testing.assert_array_equal(low.lengths, [EPISODES[e] for e in ids])
    assert low.tasks == [TASKS[e // 10000] for e in ids] and low.fps == 30.0
    first = low.rows_of(0)
    np.testing.assert_array_equal(low.action[first][:, 0], 10 + np.arange(5))
    np.testing.assert_array_equal(low.state[first][:, 0:3], 10.5)  # base
    np.testing.assert_array_equal(low.state[first][:, 7], np.arange(5))  # left arm, action layout
    np.testing.assert_array_equal(low.state[first][:, 14], 0.5)  # left gripper
    facts = json.loads((out / "meta/bpi0_episodes.json").read_text())
    assert [f["source_episode_index"] for f in facts] == ids
    batch = ChunkLoader(out, action_horizon=4, batch_size=2, shuffle=False).batch(np.arange(low.num_frames))
    for b in range(low.num_frames):
        e, t = ids[int(batch["episode_index"][b])], int(batch["frame_index"][b])
        for c, cam in enumerate(CAMS):
            img = batch["images"][cam][b]
            assert img.shape == (16, 16, 3)
            assert np.abs(img.astype(int) - _colour(e, t, c)).max() <= 8, (e, t, cam)


def test_fetch_b1k_source(replica, tmp_path):
    params = config.from_dict(
        {"dataset": {"source": f"b1k:{replica}", "cameras": ["head"], "b1k": {"resolution": 16}}}
    )
    fetch(params, out=str(tmp_path / "ds"), split=str(tmp_path / "split.json"))
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["num_episodes"] == 3 and len(split["val"]) == 1


def test_missing_pieces_are_named(replica, tmp_path):
    import shutil

    with pytest.raises(InputError, match=r"meta/info\.json: not found"):
        convert(tmp_path, tmp_path / "out", cameras=CAMS, repo_id="t/b", resolution=16)
    broken = shutil.copytree(replica, tmp_path / "broken")
    (broken / "data/task-0001/episode_00010010.parquet").unlink()
    with pytest.raises(InputError, match=r"episode_00010010\.parquet: data of episode 10010 not found"):
        convert(broken, tmp_path / "out", cameras=CAMS, repo_id="t/b", resolution=16)
    with pytest.raises(InputError, match=r"no camera feature 'observation\.images\.rgb\.top'"):
        convert(replica, tmp_path / "out", cameras=["top"], repo_id="t/b", resolution=16)
    assert not (tmp_path / "out").exists()
