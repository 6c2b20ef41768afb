"""``bpi0 train``: one training loop for both backends.

A step reads the batch of its curriculum phase (``curriculum``), draws the flow-matching
noise and time from ``(seed, step)`` (``flow.sample_noise_time``), runs the backend's
optimiser step (``backends``) and logs; every ``checkpoint_every`` steps it writes a
checkpoint (``checkpoint``). Determinism and exact resume follow from three choices:

- The noise and time of step ``s`` depend on the seed and ``s`` alone: the "RNG state" of a
  run is its seed and step, both backends see the same numbers, and a data-parallel run sees
  the same global batch as a single device.
- Each curriculum phase has its own loader, seeded from ``(seed, phase)``, whose position is
  saved with the checkpoint.
- Checkpoints are atomic and verified; a rerun resumes from the newest intact one and
  replays the same steps.

Faults never pass as results: a step whose loss, gradient norm or updated state is not
finite stops the run, naming the step and the batch's episodes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from balanced_pi0 import config as _config
from balanced_pi0 import io
from balanced_pi0.backends import Backend, init_backend, make_backend
from balanced_pi0.checkpoint import (
    all_finite,
    remove_partial_checkpoints,
    resume,
    write_checkpoint,
    write_final,
)
from balanced_pi0.curriculum import CurriculumBatches, build_curriculum, load_episode_sets
from balanced_pi0.errors import InputError, NonFiniteLossError
from balanced_pi0.flow import learning_rate, sample_noise_time
from balanced_pi0.run_meta import (
    Logger,
    RunPaths,
    check_norm_stats,
    flat_metrics,
    params_digest,
    run_metadata,
)

#: In the loss's info but a property of the spec: recorded once in metadata.json, not per step
PER_RUN_METRICS = ("effective_group_weights",)


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
    start = resume(paths.checkpoints, backend, batches, digest)
    end = total if stop_after is None else min(stop_after, total)
    batches.prepare()
    if primary and metadata is not None:
        from balanced_pi0 import hardware

        io.write_json(paths.metadata, metadata)
        io.write_json(paths.host, hardware.probe())
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
        write_final(paths.final, backend)
    return end


def _one_step(params, backend, batches, to_model_batch, step: int) -> dict[str, float]:
    tic = time.perf_counter()
    phase, raw = batches.batch(step)
    batch = dict(to_model_batch(raw))
    batch_size, horizon, action_dim = batch["actions"].shape
    batch["noise"], batch["time"] = sample_noise_time(
        params.train.seed, step, batch_size, horizon, action_dim
    )
    out = backend.train_step(batch, step)
    metrics = flat_metrics({k: v for k, v in out.items() if k not in PER_RUN_METRICS})
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
    if not all_finite(backend):
        return "params after the update"
    return None


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------
def loader_factory(params: _config.Params, dataset: str | Path):
    """``make(episodes, seed) -> ChunkLoader`` of a run's batches: what ``CurriculumBatches`` calls per phase."""
    from balanced_pi0.data.loader import ChunkLoader

    def make(episodes: np.ndarray, seed: int) -> ChunkLoader:
        return ChunkLoader(
            dataset,
            action_horizon=params.model.action_horizon,
            batch_size=params.train.batch_size,
            episodes=episodes.tolist(),
            cameras=params.dataset.cameras,
            seed=seed,
            action_dim=params.layout.build().real_action_dim,
        )

    return make


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
    initial = None if tc.init_from is None else io.load_params_npz(Path(tc.init_from))

    run_dir = Path(out)
    backend = make_backend(params)
    determinism.apply()  # again, now that torch (if it is the backend) is imported: its switches
    run_dir.mkdir(parents=True, exist_ok=True)
    run_loop(
        params,
        backend,
        CurriculumBatches(curriculum, loader_factory(params, dataset), tc.seed),
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
