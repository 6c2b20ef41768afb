"""``bpi0 train``: one training loop for both backends.

Everything that is not framework code lives here once: the learning-rate
schedule, the curriculum over episode sets, the flow-matching noise, checkpoint
policy, logging and failure handling. A backend (``backends/<name>/train_step.py``)
only owns the model state and one optimiser step (see ``Backend``).

Determinism and exact resume follow from three choices:

- The flow-matching noise and time of step ``s`` are drawn on the host from
  ``SeedSequence((seed, s))``. The "RNG state" of a run is therefore its seed and
  step, both backends see the same numbers, and a data-parallel run sees the
  same global batch as a single device.
- Each curriculum phase has its own loader, seeded from ``(seed, phase)``, whose
  position is saved with the checkpoint.
- A checkpoint is written into a temporary directory and renamed into place, so
  a killed run leaves either the whole checkpoint or none of it; a rerun resumes
  from the newest complete one and replays the same steps.

Faults never pass as results: a step whose loss, gradient norm or updated state is
not finite stops the run; only finite checkpoints are written, each with the
SHA-256 of its files (``digest.json``) recorded once it is complete; a resume
verifies it and falls back, with a warning naming what it skipped, to the newest
intact checkpoint (or stops with an error naming each one when none is intact).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from balanced_pi0 import config as _config
from balanced_pi0.errors import InputError

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "train_state.json"
#: SHA-256 of every other file of a checkpoint, written last: a checkpoint without it is not trusted
DIGEST_FILE = "digest.json"
#: A checkpoint without a digest was written before checkpoints carried one (writes are atomic)
UNVERIFIED = f"no {DIGEST_FILE} (written before checkpoints carried one)"
#: Beta(1.5, 1) flow-matching time, squeezed into [0.001, 1] (openpi).
TIME_ALPHA, TIME_BETA, TIME_MIN = 1.5, 1.0, 0.001


class NonFiniteLossError(InputError):
    """The loss, gradient norm or updated state became NaN or inf; the message names the step
    and the batch's episodes."""


# --------------------------------------------------------------------------------------
# Backend protocol
# --------------------------------------------------------------------------------------
class Backend(Protocol):
    """What a framework provides. Batches are numpy dicts from ``PolicyIO.model_batch`` plus
    ``noise`` f32[B, H, action_dim] and ``time`` f32[B]."""

    name: str
    #: the process that writes checkpoints, logs and the final params (rank 0 of a distributed run)
    is_primary: bool

    def init(self, initial: Mapping[str, np.ndarray] | None = None) -> None:
        """Fresh model (from the params seed, or ``initial`` params by openpi path), optimiser and EMA."""

    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, Any]:
        """One optimiser step at learning rate ``learning_rate(step)``; returns scalars:
        ``loss``, ``grad_norm``, ``pad_fraction``, ``group_loss`` and ``effective_group_weights`` dicts."""

    def barrier(self, name: str) -> None:
        """Wait for every process of a distributed run (a no-op for one process)."""

    def save(self, directory: Path) -> None:
        """Write params, optimiser state and EMA into ``directory`` (which does not exist yet).
        Called on every process with the same directory; each writes its share (``is_primary``
        all of it when the state is replicated)."""

    def restore(self, directory: Path) -> None:
        """Load what ``save`` wrote (called after ``init``)."""

    def sample(self, observation: Mapping[str, Any], noise: np.ndarray, num_steps: int) -> np.ndarray:
        """Actions [B, H, action_dim] from the (EMA) params by Euler integration from ``noise``."""

    def export(self, directory: Path) -> None:
        """The final (EMA) params in a backend-neutral form, for evaluation. Called on every
        process (gathering sharded params is collective); only ``is_primary`` writes."""

    def all_finite(self) -> bool:
        """Whether params, optimiser state and EMA hold only finite values (collective)."""


def make_backend(params: _config.Params, **kwargs) -> Backend:
    module = importlib.import_module(f"balanced_pi0.backends.{params.train.backend}.train_step")
    return module.make_backend(params, **kwargs)


# --------------------------------------------------------------------------------------
# Learning-rate schedule (both backends evaluate this one function)
# --------------------------------------------------------------------------------------
def learning_rate(step: int, opt: _config.OptimizerConfig) -> float:
    """openpi's ``CosineDecaySchedule``: ``optax.warmup_cosine_decay_schedule`` from
    ``peak/(warmup+1)`` up to ``peak`` over ``warmup_steps``, then cosine down to ``decay_lr``
    at ``decay_steps`` and flat after. ``step`` counts updates already applied."""
    init = opt.peak_lr / (opt.warmup_steps + 1)
    if step < opt.warmup_steps:
        return init + (opt.peak_lr - init) * step / opt.warmup_steps
    span = opt.decay_steps - opt.warmup_steps
    progress = min(step - opt.warmup_steps, span) / span
    return opt.decay_lr + (opt.peak_lr - opt.decay_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def flow_noise(
    seed: int, step: int, batch_size: int, horizon: int, action_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Noise ε ~ N(0, I) [B, H, D] and time t ~ Beta(1.5, 1)·0.999 + 0.001 [B] for step ``step``."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, step)))
    noise = rng.standard_normal((batch_size, horizon, action_dim), dtype=np.float32)
    t = rng.beta(TIME_ALPHA, TIME_BETA, size=batch_size) * (1.0 - TIME_MIN) + TIME_MIN
    return noise, t.astype(np.float32)


# --------------------------------------------------------------------------------------
# Curriculum
# --------------------------------------------------------------------------------------
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
    from balanced_pi0.data.split import read_split

    split = read_split(split_path, dataset_episodes=dataset_episodes)
    sets = {"train": np.asarray(split["train"], dtype=np.int64)}
    if arm_heavy_path is not None and Path(arm_heavy_path).exists():
        raw = _read_json(Path(arm_heavy_path))
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


# --------------------------------------------------------------------------------------
# Checkpoints: atomic directories ``step_00000100``
# --------------------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary directories are not listed)."""
    if not root.exists():
        return []
    out = []
    for p in root.iterdir():
        suffix = p.name.removeprefix(CHECKPOINT_PREFIX)
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            out.append((int(suffix), p))
    return sorted(out)


def write_checkpoint(
    root: Path, step: int, backend: Backend, train_state: Mapping[str, Any], keep: int
) -> Path:
    """Save into ``root/.tmp-step_N`` then rename: a killed write leaves no checkpoint, not half of one.

    Every process calls this (``root`` is shared by the hosts of a distributed run): all write
    their shards through ``backend.save``; the primary process alone creates, renames and prunes."""
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    primary = getattr(backend, "is_primary", True)
    if not _all_finite(backend):  # a NaN checkpoint would pass as the last good one
        raise NonFiniteLossError(
            f"step {step}: the params, optimiser state or EMA hold non-finite values; no checkpoint "
            f"written, the last good one in {root} is kept"
        )
    if primary:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier(backend, "checkpoint-begin")
    backend.save(tmp / "model")
    _barrier(backend, "checkpoint-saved")
    if primary:
        _write_json(tmp / STATE_FILE, train_state)
        _write_json(tmp / DIGEST_FILE, {"sha256": tree_sha256(tmp)})  # last: the checkpoint is complete
        _fsync_tree(tmp)
        if final.exists():  # a rerun of the same step writes the same bytes; replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    _barrier(backend, "checkpoint-done")
    return final


def _barrier(backend: Backend, name: str) -> None:
    barrier = getattr(backend, "barrier", None)
    if barrier is not None:
        barrier(name)


def _all_finite(backend: Backend) -> bool:
    check = getattr(backend, "all_finite", None)
    return True if check is None else bool(check())


def tree_sha256(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` but the digest file itself, by relative path."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != DIGEST_FILE:
            h = hashlib.sha256()
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[rel] = h.hexdigest()
    return out


def verify_checkpoint(path: Path) -> str | None:
    """``None`` when every file of the checkpoint has the digest recorded at write time, else why not."""
    try:
        expected = json.loads((path / DIGEST_FILE).read_text())["sha256"]
    except FileNotFoundError:
        return UNVERIFIED
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {DIGEST_FILE} ({type(e).__name__})"
    actual = tree_sha256(path)
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    if missing or extra:
        return f"files missing {missing[:3]} or unexpected {extra[:3]}"
    changed = sorted(k for k in expected if actual[k] != expected[k])
    if changed:
        return f"checksum mismatch in {changed[:3]}"
    return None


def remove_partial_checkpoints(root: Path) -> None:
    if root.exists():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())


# --------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------
def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{"group_loss": {"base": x}}`` → ``{"group_loss/base": x}``, as Python floats."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            out.update({f"{k}/{g}": float(x) for g, x in v.items()})
        else:
            out[k] = float(v)
    return out


#: Metrics that depend on the clock: on the progress bar only, so logged files repeat byte for byte.
WALL_CLOCK_METRICS = ("samples_per_s",)


class Logger:
    """dvclive metrics (no timestamps: outputs must not depend on the clock) and a tqdm bar."""

    def __init__(self, live_dir: Path, start: int, total: int, enabled: bool = True):
        from dvclive import Live
        from tqdm import tqdm

        if start > 0:
            _truncate_live(live_dir, start)
        self.live = Live(str(live_dir), resume=start > 0, save_dvc_exp=False, dvcyaml=None, report=None)
        self.live.step = start
        self.bar = tqdm(total=total, initial=start, desc="train", disable=not enabled, dynamic_ncols=True)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.live.step = step
        for k, v in metrics.items():
            if k in WALL_CLOCK_METRICS:  # shown on the bar, kept out of the files DVC hashes
                continue
            self.live.log_metric(k, v, timestamp=False)
        self.live.next_step()

    def tick(self, metrics: Mapping[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}", samples_s=f"{metrics['samples_per_s']:.1f}", refresh=False
        )

    def close(self) -> None:
        self.bar.close()
        self.live.end()


def _truncate_live(live_dir: Path, start: int) -> None:
    """Drop rows a killed run logged after its last checkpoint; the resumed run logs them again."""
    for tsv in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        col = lines[0].split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) < start]
        tsv.write_text("\n".join(kept) + "\n")


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def live(self) -> Path:
        return self.root / "live"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.json"

    @property
    def host(self) -> Path:
        """The machine that trained (``hardware.probe``). Apart from metadata.json, whose bytes must
        not depend on the machine; .dvcignore hides it from DVC so dvc.lock stays host-free."""
        return self.root / "host.json"


def run_loop(
    params: _config.Params,
    backend: Backend,
    batches: CurriculumBatches,
    to_model_batch: Callable[[dict], dict],
    run_dir: Path,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    initial_params: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
    initial_source: str = "train.init_from",
) -> int:
    """Train from the newest checkpoint in ``run_dir`` (or from scratch) to the end of the
    curriculum, or to step ``stop_after`` (to simulate a kill). Returns the last step reached.
    ``metadata`` is written to ``run_dir/metadata.json`` once the model is built and resumed."""
    tc = params.train
    paths = RunPaths(Path(run_dir))
    total = tc.total_steps
    primary = backend.is_primary
    if primary:
        remove_partial_checkpoints(paths.checkpoints)
    init_backend(backend, initial_params, initial_source)
    digest = params_digest(params)
    start = _resume(paths.checkpoints, backend, batches, digest)
    end = total if stop_after is None else min(stop_after, total)
    batches.prepare()
    if primary and metadata is not None:
        from balanced_pi0 import hardware

        _write_json(paths.metadata, metadata)
        _write_json(paths.host, hardware.probe())
    logger = Logger(paths.live, start, total, enabled=progress) if primary else None
    try:
        for step in range(start, end):
            metrics = _one_step(params, backend, batches, to_model_batch, step)
            done = step + 1
            if primary:
                logger.tick(metrics)
                if step % tc.log_every == 0 or step == total - 1:
                    logger.log(step, metrics)
            if done % tc.checkpoint_every == 0 or done == total:
                state = {
                    "step": done,
                    "seed": tc.seed,
                    "loader": batches.state_dict(),
                    "params_digest": digest,
                }
                write_checkpoint(paths.checkpoints, done, backend, state, tc.keep_checkpoints)
    finally:
        if logger is not None:
            logger.close()
    if end == total:
        _write_final(paths.final, backend)
    return end


def init_backend(backend: Backend, initial: Mapping[str, np.ndarray] | None, source: str) -> None:
    """``backend.init``; params that do not fit the model config are an error naming their file."""
    try:
        backend.init(initial)
    except InputError as e:
        if initial is None:
            raise
        raise InputError(f"{source}: {e}") from None


def params_digest(params: _config.Params) -> str:
    """Fingerprint of the params a checkpoint was trained with."""
    import hashlib

    return hashlib.sha256(json.dumps(_config.to_dict(params), sort_keys=True).encode()).hexdigest()


def _resume(root: Path, backend: Backend, batches: CurriculumBatches, digest: str) -> int:
    """The step to start from: the newest intact, readable, finite checkpoint's, else 0.

    Corrupt checkpoints newer than it are named in a warning and removed (their steps are replayed).
    When none is intact the run stops, naming each, rather than silently start over; checkpoints
    that only lack a digest (written before checkpoints carried one) are retrained from scratch."""
    checkpoints = list_checkpoints(root)
    if not checkpoints:
        return 0
    reason = _stale_reason(root, checkpoints[-1][1], digest)
    if reason is not None:
        _start_over(root, backend, reason)
        return 0
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(checkpoints):
        problem = verify_checkpoint(path) or _try_restore(backend, path)
        if problem is None:
            state = _read_json(path / STATE_FILE)
            _drop_skipped(backend, skipped, path)
            batches.load_state_dict(state["loader"])
            return int(state["step"])
        skipped.append((path, problem))
    if all(why == UNVERIFIED for _, why in skipped):
        _start_over(root, backend, f"have {UNVERIFIED}")
        return 0
    named = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    raise InputError(
        f"{root}: no intact checkpoint to resume from ({named}); delete {root} to train from scratch"
    )


def _stale_reason(root: Path, newest: Path, digest: str) -> str | None:
    """Why the checkpoints cannot be resumed whatever their state, or ``None``."""
    if not (root.parent / "live" / "metrics.json").exists():
        # The logs of the steps before the checkpoint are gone (deleted by hand, or by DVC): a
        # resumed run could not log them again, so its outputs would be incomplete.
        return "have no training log beside them"
    try:
        state = json.loads((newest / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None  # unreadable: the integrity check names it
    if isinstance(state, dict) and state.get("params_digest") != digest:
        # Another experiment's checkpoints (DVC reruns the stage after a params change): resuming
        # would mix the two, so the run starts over, as DVC expects of a stage whose params changed.
        return "were trained under other params"
    return None


def _start_over(root: Path, backend: Backend, reason: str) -> None:
    _barrier(backend, "resume-read")  # every process has decided before the files go
    if backend.is_primary:
        print(f"{root}: checkpoints {reason}; training from scratch", file=sys.stderr)
        shutil.rmtree(root)
        shutil.rmtree(root.parent / "live", ignore_errors=True)
    _barrier(backend, "resume-cleared")


def _try_restore(backend: Backend, path: Path) -> str | None:
    """``None`` when the checkpoint restored and holds only finite values, else what is wrong."""
    try:
        backend.restore(path / "model")
    except Exception as e:  # any format error of any backend: the caller falls back to an older one
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return f"unreadable: {type(e).__name__}: {first}"
    if not _all_finite(backend):
        return "holds non-finite values"
    return None


def _drop_skipped(backend: Backend, skipped: Sequence[tuple[Path, str]], used: Path) -> None:
    if not skipped:
        return
    _barrier(backend, "resume-verified")
    if backend.is_primary:
        for path, why in skipped:
            print(f"warning: {path}: skipped ({why}); removed, its steps are trained again", file=sys.stderr)
            shutil.rmtree(path)
        print(f"warning: resuming from {used}", file=sys.stderr)
    _barrier(backend, "resume-dropped")


def _one_step(params, backend, batches, to_model_batch, step: int) -> dict[str, float]:
    tic = time.perf_counter()
    phase, raw = batches.batch(step)
    batch = dict(to_model_batch(raw))
    batch_size, horizon, action_dim = batch["actions"].shape
    batch["noise"], batch["time"] = flow_noise(params.train.seed, step, batch_size, horizon, action_dim)
    metrics = flat_metrics(backend.train_step(batch, step))
    what = _non_finite(metrics, backend)
    if what is not None:
        episodes = sorted({int(e) for e in np.asarray(raw["episode_index"]).ravel()})
        raise NonFiniteLossError(
            f"step {step}: non-finite {what} on a batch from episodes {episodes} "
            f"(phase {phase.index}, {phase.source}); the last good checkpoint is kept"
        )
    metrics["lr"] = learning_rate(step, params.train.optimizer)
    metrics["phase"] = float(phase.index)
    metrics["samples_per_s"] = batch_size / (time.perf_counter() - tic)
    return metrics


def _non_finite(metrics: Mapping[str, float], backend: Backend) -> str | None:
    """What went non-finite in a step: the loss, the gradient norm (the loss can stay finite while
    the gradient overflows) or the updated params, optimiser state or EMA."""
    for key in ("loss", "grad_norm"):
        if key in metrics and not math.isfinite(metrics[key]):
            return f"{key.replace('_', ' ')} {metrics[key]}"
    if not _all_finite(backend):
        return "params after the update"
    return None


def _write_final(final: Path, backend: Backend) -> None:
    tmp = final.with_name(f".tmp-{final.name}")
    if backend.is_primary:
        shutil.rmtree(tmp, ignore_errors=True)
    backend.export(tmp)  # collective; the primary process writes
    if backend.is_primary:
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _barrier(backend, "final-written")


# --------------------------------------------------------------------------------------
# Files whose bytes depend only on their content
# --------------------------------------------------------------------------------------
def save_params_npz(path: Path, params: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` with sorted names and a fixed zip timestamp (``np.savez`` stamps the clock)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(params):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(params[name]), allow_pickle=False)


def load_params_npz(path: Path, what: str = "train.init_from") -> dict[str, np.ndarray]:
    """Params by openpi path from an ``.npz``; a missing, corrupt or non-finite file is an
    ``InputError`` naming the path (and ``what`` it was given as)."""
    import zipfile

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


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------
def train(
    params: _config.Params,
    dataset: str = "data/dataset",
    split: str = "data/split.json",
    arm_heavy: str = "data/arm_heavy.json",
    norm_stats: str = "data/norm_stats",
    out: str = "runs/train",
    stop_after: str | int | None = None,
) -> None:
    """``bpi0 train``: train ``params.train.backend`` on the dataset into ``out``.

    Writes ``out/checkpoints/step_N/`` (resumed from on a rerun), ``out/live/`` (dvclive
    metrics and plots), ``out/metadata.json`` and, at the end, ``out/final/params.npz``
    (EMA params by openpi path). ``stop_after`` ends the run early at that step, as a kill would.
    """
    from balanced_pi0 import determinism
    from balanced_pi0.data.loader import ChunkLoader
    from balanced_pi0.data.lowdim import load_lowdim
    from balanced_pi0.policy_io import PolicyIO

    stop = parse_stop_after(stop_after)
    determinism.apply()  # before the backend's framework runs anything: XLA reads its flags once
    tc = params.train
    real_action_dim = params.layout.build().real_action_dim
    # Every input is checked before anything is written: a data error leaves --out as it was.
    low = load_lowdim(Path(dataset), action_dim=real_action_dim)
    needs_arm_heavy = any(p.episodes == "arm_heavy" for p in tc.curriculum)
    sets = load_episode_sets(split, arm_heavy if needs_arm_heavy else None, low.episodes)
    curriculum = build_curriculum(tc.curriculum, sets)
    policy_io = PolicyIO.from_params(params, norm_stats)
    check_norm_stats(policy_io, params, norm_stats, state_dim=low.state.shape[1])
    initial = None if tc.init_from is None else load_params_npz(Path(tc.init_from))

    def make_loader(episodes: np.ndarray, seed: int) -> ChunkLoader:
        return ChunkLoader(
            dataset,
            action_horizon=params.model.action_horizon,
            batch_size=tc.batch_size,
            episodes=episodes.tolist(),
            cameras=params.dataset.cameras,
            seed=seed,
            action_dim=real_action_dim,
        )

    run_dir = Path(out)
    backend = make_backend(params)
    determinism.apply()  # again, now that torch (if it is the backend) is imported: its switches
    run_dir.mkdir(parents=True, exist_ok=True)
    run_loop(
        params,
        backend,
        CurriculumBatches(curriculum, make_loader, tc.seed),
        policy_io.model_batch,
        run_dir,
        stop_after=stop,
        initial_params=initial,
        initial_source=str(tc.init_from),
        metadata=run_metadata(params, curriculum, norm_stats),
    )


def parse_stop_after(value: str | int | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        stop = int(value)
    except (TypeError, ValueError):
        raise InputError(f"--stop-after: expected a whole number of steps, got {value!r}") from None
    if stop < 0:
        raise InputError(f"--stop-after: expected a step count >= 0, got {stop}")
    return stop


def check_norm_stats(policy_io, params: _config.Params, path: str | Path, state_dim: int) -> None:
    """Norm stats must fit the layout (actions: [D] or per-timestep [H, D]) and the dataset's
    state width, before the first step rather than as an unnamed shape error inside it."""
    file = Path(path) / f"{params.train.norm_stats}.json"
    real, horizon = params.layout.build().real_action_dim, params.model.action_horizon
    actions = tuple(policy_io.norm_stats["actions"].mean.shape)
    if actions not in ((real,), (horizon, real)):
        raise InputError(
            f"{file}: norm_stats.actions has shape {list(actions)}, the layout needs [{real}] "
            f"or [{horizon}, {real}] (model.action_horizon x real_action_dim)"
        )
    state = tuple(policy_io.norm_stats["state"].mean.shape)
    if state != (state_dim,):
        raise InputError(
            f"{file}: norm_stats.state has shape {list(state)}, the dataset's state is [{state_dim}]"
        )


def run_metadata(params: _config.Params, curriculum: Sequence[Phase], norm_stats: str) -> dict:
    """What a reader needs to trust the run: params, data, determinism flags, versions; no clock."""
    from importlib.metadata import version

    from balanced_pi0 import determinism

    return {
        "backend": params.train.backend,
        "params": _config.to_dict(params),
        "norm_stats": f"{params.train.norm_stats}.json",
        "curriculum": [
            {
                "phase": p.index,
                "steps": [p.start, p.stop],
                "episodes": p.source,
                "num_episodes": len(p.episodes),
            }
            for p in curriculum
        ],
        "determinism": determinism.record(),
        # The CPU and GPU are named in host.json beside this file, not here: these bytes are the
        # same on every host the pins cover, so dvc.lock is too.
        "host": "host.json",
        "versions": {lib: version(lib) for lib in ("orbax-checkpoint", "lerobot", "dvclive", "safetensors")},
    }
