"""The chunk loader: training batches from a LeRobot v3.0 dataset root.

Semantics are LeRobot's ``delta_timestamps = {"action": [k / fps for k < H]}``:
the chunk of frame ``t`` is actions ``t .. t+H-1`` of its episode; steps past the
episode's last frame repeat that frame and are marked ``action_is_pad``. The
tests hold every item equal to ``LeRobotDataset(..., delta_timestamps=...)``.

Why it is fast: the low-dimensional columns are loaded once (``lowdim``) and a
batch of chunks is one vectorised gather; images are decoded only for the
frames in the batch (PNG bytes are kept encoded in memory; video frames are
decoded by LeRobot's PyAV decoder).

Order: each epoch is a permutation seeded by ``(seed, epoch)``; ``state_dict()``
records (epoch, position) so a resumed run continues with the same batches.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from balanced_pi0.data.lowdim import LowDim, data_files, load_lowdim, read_info, read_parquet
from balanced_pi0.errors import InputError

IMAGE_PREFIX = "observation.images."
#: LeRobot's default timestamp tolerance (seconds), for video frame lookup
TOLERANCE_S = 1e-4


def chunk_rows(low: LowDim, rows: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``[B, H]`` of each chunk, clamped to its episode, and the padding mask."""
    ep = np.searchsorted(low.ep_stop, rows, side="right")
    start, stop = low.ep_start[ep][:, None], low.ep_stop[ep][:, None]
    query = rows[:, None] + offsets[None, :]
    is_pad = (query < start) | (query >= stop)
    return np.clip(query, start, stop - 1), is_pad


class ChunkLoader:
    """Batches ``{images, state, actions, action_is_pad, prompt, episode_index, frame_index}``.

    ``episodes`` restricts the samples to those episode ids (train, val, arm-heavy);
    every frame of them is one sample, as in LeRobot.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        action_horizon: int,
        batch_size: int,
        episodes: Sequence[int] | None = None,
        cameras: Sequence[str] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        action_dim: int | None = None,
    ):
        self.root = Path(root)
        full = load_lowdim(self.root, action_dim=action_dim)
        self.low = full if episodes is None else full.select(episodes)
        self.action_horizon = int(action_horizon)
        self.delta_timestamps = {"action": [k / full.fps for k in range(self.action_horizon)]}
        self._offsets = _delta_indices(self.delta_timestamps, full.fps)
        self.batch_size, self.seed, self.shuffle, self.drop_last = (
            int(batch_size),
            int(seed),
            shuffle,
            drop_last,
        )
        if drop_last and self.low.num_frames < self.batch_size:
            raise InputError(
                f"{self.root}: {self.low.num_frames} frames in the chosen episodes, fewer than one batch "
                f"of {self.batch_size}"
            )
        self.images = _FrameSource(self.root, full, cameras)
        self.epoch = 0
        self.position = 0

    # --- order and position ------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self.low.num_frames

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample rows of ``epoch`` in the order they are served."""
        rows = np.arange(self.num_samples)
        if not self.shuffle:
            return rows
        return np.random.default_rng([self.seed, epoch]).permutation(rows)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_samples"):
            if state.get(key) != getattr(self, key):
                raise InputError(
                    f"loader state: {key} {state.get(key)!r} does not match this loader's {getattr(self, key)!r}; "
                    "resuming would serve different batches"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[dict]:
        """The rest of the current epoch, then the position moves to the next epoch."""
        order = self.epoch_order(self.epoch)
        end = len(self) * self.batch_size if self.drop_last else self.num_samples
        while self.position < end:
            rows = order[self.position : self.position + self.batch_size]
            self.position += len(rows)
            yield self.batch(rows)
        self.epoch, self.position = self.epoch + 1, 0

    def batches(self) -> Iterator[dict]:
        """Endless batches across epochs (the training loop's view)."""
        while True:
            yield from self

    # --- gathering -----------------------------------------------------------------
    def batch(self, rows: np.ndarray) -> dict:
        """The batch of sample rows ``rows`` (positions in ``self.low``)."""
        rows = np.asarray(rows, dtype=np.int64)
        low = self.low
        query, is_pad = chunk_rows(low, rows, self._offsets)
        return {
            "images": self.images.frames(low.index[rows]),
            "state": low.state[rows],
            "actions": low.action[query],
            "action_is_pad": is_pad,
            "prompt": [low.task_names[i] for i in low.task_index[rows]],
            "episode_index": low.episode_index[rows],
            "frame_index": low.frame_index[rows],
        }


def _delta_indices(delta_timestamps: dict, fps: float) -> np.ndarray:
    # LeRobot's get_delta_indices, without importing its torch-heavy package.
    return np.asarray([round(d * fps) for d in delta_timestamps["action"]], dtype=np.int64)


class _FrameSource:
    """Decodes the frames of given absolute dataset indices, camera by camera.

    Image features: the PNG bytes of every frame stay encoded in memory (the size
    of the files on disk) and only requested frames are decoded. Video features:
    LeRobot's decoder reads the requested timestamps from the episode's file.
    """

    def __init__(self, root: Path, low: LowDim, cameras: Sequence[str] | None):
        info = read_info(root)
        keys = {k: ft["dtype"] for k, ft in info["features"].items() if ft["dtype"] in ("image", "video")}
        names = [k.removeprefix(IMAGE_PREFIX) for k in keys]
        cameras = list(names if cameras is None else cameras)
        missing = [c for c in cameras if IMAGE_PREFIX + c not in keys]
        if missing:
            raise InputError(
                f"{root / 'meta/info.json'}: no camera feature(s) {missing}; cameras are {names}"
            )
        self.root, self.cameras, self.fps = root, cameras, float(info["fps"])
        self.kinds = {c: keys[IMAGE_PREFIX + c] for c in cameras}
        self.shapes = {c: tuple(info["features"][IMAGE_PREFIX + c]["shape"]) for c in cameras}
        # absolute dataset index -> row in the flat (file-concatenated) order of the data files
        self._pngs: dict[str, list] = {c: [] for c in cameras if self.kinds[c] == "image"}
        index_parts = []
        for path in data_files(root):
            cols = ["index", *(IMAGE_PREFIX + c for c in self._pngs)]
            table = read_parquet(path, columns=cols)
            index_parts.append(table.column("index").to_numpy())
            for c in self._pngs:
                self._pngs[c].append(table.column(IMAGE_PREFIX + c).combine_chunks().field("bytes"))
        flat_index = np.concatenate(index_parts).astype(np.int64)
        self._sorted = np.argsort(flat_index, kind="stable")
        self._sorted_index = flat_index[self._sorted]
        self._file_starts = np.cumsum([0] + [len(p) for p in index_parts])
        self._episode_of = (
            dict(zip(low.index.tolist(), low.episode_index.tolist(), strict=True))
            if any(k == "video" for k in self.kinds.values())
            else {}
        )
        self._timestamp_of = (
            dict(zip(low.index.tolist(), (low.frame_index / self.fps).tolist(), strict=True))
            if self._episode_of
            else {}
        )
        self._meta = None

    def frames(self, index: np.ndarray) -> dict[str, np.ndarray]:
        flat = self._sorted[np.searchsorted(self._sorted_index, index)]
        file_id = np.searchsorted(self._file_starts, flat, side="right") - 1
        row = flat - self._file_starts[file_id]
        out = {}
        for cam in self.cameras:
            h, w = self.shapes[cam][:2]
            buf = np.empty((len(index), h, w, 3), dtype=np.uint8)
            for b in range(len(index)):
                if self.kinds[cam] == "image":
                    buf[b] = _decode_png(self._pngs[cam][file_id[b]][row[b]].as_py())
                else:
                    buf[b] = self._video_frame(cam, int(index[b]))
            out[cam] = buf
        return out

    def _video_frame(self, cam: str, index: int) -> np.ndarray:
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
        from lerobot.datasets.video_utils import decode_video_frames

        if self._meta is None:
            self._meta = LeRobotDatasetMetadata("local/dataset", root=self.root)
        key = IMAGE_PREFIX + cam
        ep_idx = self._episode_of[index]
        ep = self._meta.episodes[ep_idx]
        ts = ep[f"videos/{key}/from_timestamp"] + self._timestamp_of[index]
        path = self.root / self._meta.get_video_file_path(ep_idx, key)
        frames = decode_video_frames(path, [ts], TOLERANCE_S, "pyav", return_uint8=True)
        return frames.squeeze(0).permute(1, 2, 0).numpy()


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))
