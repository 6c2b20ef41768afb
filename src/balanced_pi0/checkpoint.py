"""The checkpoint protocol: atomic ``step_00000100`` directories, verified on resume.

A checkpoint is written into ``.tmp-step_N`` and renamed into place, so a killed run
leaves either the whole checkpoint or none of it. It holds the backend's own files
(``model/``: orbax in JAX, safetensors in PyTorch), the loop's position
(``train_state.json``: step, seed, loader positions, params digest) and, written
last, the SHA-256 of every other file (``digest.json``). Only finite states are
written. A resume verifies the newest checkpoint and falls back, with a warning
naming what it skipped, to the newest intact one; it stops, naming each, when none
is intact, and starts over when the checkpoints belong to other params or their
training log is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from balanced_pi0 import io
from balanced_pi0.backends import Backend
from balanced_pi0.curriculum import CurriculumBatches
from balanced_pi0.errors import InputError, NonFiniteLossError

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "train_state.json"
#: SHA-256 of every other file of a checkpoint, written last: a checkpoint without it is not trusted
DIGEST_FILE = "digest.json"
#: A checkpoint without a digest was written before checkpoints carried one (writes are atomic)
UNVERIFIED = f"no {DIGEST_FILE} (written before checkpoints carried one)"


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
    if not all_finite(backend):  # a NaN checkpoint would pass as the last good one
        raise NonFiniteLossError(
            f"step {step}: the params, optimiser state or EMA hold non-finite values; no checkpoint "
            f"written, the last good one in {root} is kept"
        )
    if primary:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(backend, "checkpoint-begin")
    backend.save(tmp / "model")
    barrier(backend, "checkpoint-saved")
    if primary:
        io.write_json(tmp / STATE_FILE, train_state)
        io.write_json(tmp / DIGEST_FILE, {"sha256": tree_sha256(tmp)})  # last: the checkpoint is complete
        io.fsync_tree(tmp)
        if final.exists():  # a rerun of the same step writes the same bytes; replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    barrier(backend, "checkpoint-done")
    return final


def barrier(backend: Backend, name: str) -> None:
    barrier = getattr(backend, "barrier", None)
    if barrier is not None:
        barrier(name)


def all_finite(backend: Backend) -> bool:
    check = getattr(backend, "all_finite", None)
    return True if check is None else bool(check())


def tree_sha256(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` but the digest file itself, by relative path."""
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


def resume(root: Path, backend: Backend, batches: CurriculumBatches, digest: str) -> int:
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
            state = io.read_json(path / STATE_FILE)
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
    barrier(backend, "resume-read")  # every process has decided before the files go
    if backend.is_primary:
        print(f"{root}: checkpoints {reason}; training from scratch", file=sys.stderr)
        shutil.rmtree(root)
        shutil.rmtree(root.parent / "live", ignore_errors=True)
    barrier(backend, "resume-cleared")


def _try_restore(backend: Backend, path: Path) -> str | None:
    """``None`` when the checkpoint restored and holds only finite values, else what is wrong."""
    try:
        backend.restore(path / "model")
    except Exception as e:  # any format error of any backend: the caller falls back to an older one
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return f"unreadable: {type(e).__name__}: {first}"
    if not all_finite(backend):
        return "holds non-finite values"
    return None


def _drop_skipped(backend: Backend, skipped: Sequence[tuple[Path, str]], used: Path) -> None:
    if not skipped:
        return
    barrier(backend, "resume-verified")
    if backend.is_primary:
        for path, why in skipped:
            print(f"warning: {path}: skipped ({why}); removed, its steps are trained again", file=sys.stderr)
            shutil.rmtree(path)
        print(f"warning: resuming from {used}", file=sys.stderr)
    barrier(backend, "resume-dropped")


def write_final(final: Path, backend: Backend) -> None:
    tmp = final.with_name(f".tmp-{final.name}")
    if backend.is_primary:
        shutil.rmtree(tmp, ignore_errors=True)
    backend.export(tmp)  # collective; the primary process writes
    if backend.is_primary:
        io.fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier(backend, "final-written")
