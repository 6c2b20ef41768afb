"""JAX backend of ``balanced_pi0.train``: the jitted optimiser step, EMA, orbax checkpoints.

The optimiser is openpi's: global-norm clipping, then AdamW at the schedule's
learning rate and an exponential moving average of the params. The schedule is
optax's ``warmup_cosine_decay_schedule``, which runs inside the compiled step;
``flow.learning_rate`` is the same schedule (a test holds the two equal) for the
PyTorch step and the logs.

Devices form a ``(data, fsdp)`` mesh, as in openpi: the batch is split over both axes,
and every parameter (with its optimiser moments and EMA) of at least ``fsdp_min_bytes``
is split over ``fsdp`` along its largest divisible axis (``train.fsdp_devices``; 1 =
replicated, plain data parallelism). Many hosts join through ``jax.distributed``
(``init_distributed``): each process runs the same loop on the same global batch and
hands its devices their slices; orbax writes each process's shards of a checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from balanced_pi0 import config as _config
from balanced_pi0 import model_config
from balanced_pi0.backends import ModelApi
from balanced_pi0.errors import InputError
from balanced_pi0.io import save_params_npz
from balanced_pi0.loss import LossSpec, action_loss

#: Parameters smaller than this stay replicated under FSDP (openpi's default: 4 MiB); tests lower it.
FSDP_MIN_BYTES = 4 * 2**20
#: The mesh's axes: the batch is split over both, large parameters over ``fsdp``.
DATA_AXIS, FSDP_AXIS = "data", "fsdp"

#: orbax writes these JSON files with wall-clock timestamps; zeroed so that checkpoints are byte-stable.
_TIMESTAMP_KEYS = ("init_timestamp_nsecs", "commit_timestamp_nsecs")


def make_schedule(opt: _config.OptimizerConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=opt.peak_lr / (opt.warmup_steps + 1),
        peak_value=opt.peak_lr,
        warmup_steps=opt.warmup_steps,
        decay_steps=opt.decay_steps,
        end_value=opt.decay_lr,
    )


def make_optimizer(opt: _config.OptimizerConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(opt.clip_norm),
        optax.adamw(make_schedule(opt), b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay),
    )


@jax.tree_util.register_dataclass
@dataclass
class TrainState:
    params: Any
    opt_state: Any
    ema: Any


def _step(graphdef, rest, tx, spec: LossSpec, ema_decay: float | None, make_obs, state: TrainState, batch):
    def loss_fn(params):
        model = nnx.merge(graphdef, params, rest)
        sq_err = model.compute_loss(
            make_obs(batch["observation"]), batch["actions"], batch["noise"], batch["time"]
        )
        return action_loss(sq_err, batch["action_is_pad"], batch["actions"], spec)

    (loss, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema_decay is not None:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **info}
    return TrainState(params, opt_state, ema), metrics


def init_distributed() -> None:
    """Join a multi-host run before JAX touches a device; a no-op for one process.

    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` name the run explicitly; ``JAX_DISTRIBUTED=auto`` lets JAX detect it
    (SLURM, Open MPI, Cloud TPU, Kubernetes). CPU processes talk over gloo, GPUs over NCCL.
    """
    if jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(k)]
        if missing:
            raise InputError(
                f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not: "
                "a multi-host run needs the number of processes and this process's id"
            )
        jax.distributed.initialize(
            os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif os.environ.get("JAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()


def make_mesh(fsdp_devices: int) -> jax.sharding.Mesh:
    """``(data, fsdp)`` over every device of every process; ``fsdp_devices`` must divide their count."""
    count = jax.device_count()
    if count % fsdp_devices:
        raise InputError(f"train.fsdp_devices {fsdp_devices} does not divide the {count} devices")
    # Auto axes: XLA propagates the shardings through the model (Explicit axes would ask every
    # gather in the model to name its output sharding).
    return jax.make_mesh(
        (count // fsdp_devices, fsdp_devices), (DATA_AXIS, FSDP_AXIS), axis_types=(AxisType.Auto,) * 2
    )


def fsdp_sharding(tree, mesh: jax.sharding.Mesh, min_bytes: int = FSDP_MIN_BYTES):
    """Per leaf: split the largest axis that ``fsdp`` divides, for arrays of ≥ 2 axes and
    ≥ ``min_bytes``; everything else (norms, biases, step counts) is replicated. openpi's rule."""
    replicated = NamedSharding(mesh, PartitionSpec())
    fsdp = mesh.shape[FSDP_AXIS]

    def one(leaf):
        shape = getattr(leaf, "shape", ())
        if fsdp == 1 or len(shape) < 2 or np.prod(shape) * np.dtype(leaf.dtype).itemsize < min_bytes:
            return replicated
        for axis in np.argsort(shape, kind="stable")[::-1]:
            if shape[axis] % fsdp == 0:
                spec = [None] * len(shape)
                spec[axis] = FSDP_AXIS
                return NamedSharding(mesh, PartitionSpec(*spec))
        return replicated

    return jax.tree.map(one, tree)


class Backend:
    name = "jax"

    def __init__(
        self,
        params: _config.Params,
        model_api: ModelApi | None = None,
        fsdp_min_bytes: int = FSDP_MIN_BYTES,
    ):
        init_distributed()
        self.model_config = model_config.from_params(params)
        self.seed = params.train.seed
        self.opt = params.train.optimizer
        self.spec = LossSpec.from_config(params)
        self.api = model_api or pi0_api()
        self.tx = make_optimizer(self.opt)
        self.fsdp_devices, self.fsdp_min_bytes = params.train.fsdp_devices, fsdp_min_bytes
        self.mesh = make_mesh(self.fsdp_devices)
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec((DATA_AXIS, FSDP_AXIS)))
        self.state: TrainState | None = None
        self._jit_sample: dict[int, Any] = {}
        self._jit_finite = None

    # --- lifecycle -------------------------------------------------------------------
    def init(self, initial: Mapping[str, np.ndarray] | None = None) -> None:
        model = self.api.build(self.model_config, nnx.Rngs(self.seed))
        if initial is not None:
            self.api.load(model, initial)
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        ema = jax.tree.map(jnp.copy, params) if self.opt.ema_decay is not None else None
        # The loss is computed on the global batch, so padding-aware normalisation is exactly one
        # device's whatever the mesh. The optimiser moments and the EMA are sharded as their params.
        state = TrainState(params, self.tx.init(params), ema)
        self._state_sharding = fsdp_sharding(state, self.mesh, self.fsdp_min_bytes)
        self.state = jax.device_put(state, self._state_sharding)
        step = partial(
            _step, self.graphdef, self.rest, self.tx, self.spec, self.opt.ema_decay, self.api.observation
        )
        self._jit_step = jax.jit(
            step, donate_argnums=0, out_shardings=(self._state_sharding, self._replicated)
        )

    @property
    def is_primary(self) -> bool:
        return jax.process_index() == 0

    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, Any]:
        self.state, metrics = self._jit_step(self.state, self.global_batch(batch))
        return jax.tree.map(float, jax.device_get(metrics))

    def global_batch(self, batch: Mapping[str, Any]):
        """The host's numpy batch (the same global batch on every process) as arrays split over
        the mesh: each process hands only its own devices their rows."""
        batch_size = len(batch["actions"])
        if batch_size % self.mesh.size:
            raise InputError(f"train.batch_size {batch_size} does not split over {self.mesh.size} devices")

        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self._batch_sharding, lambda index: x[index])

        return jax.tree.map(put, dict(batch))

    def all_finite(self) -> bool:
        """Params, optimiser state and EMA hold no NaN/inf (one reduction over the sharded state)."""
        if self._jit_finite is None:
            self._jit_finite = jax.jit(_tree_all_finite, out_shardings=self._replicated)
        return bool(self._jit_finite(self._tree()))

    def barrier(self, name: str) -> None:
        """Every process waits here for the others (checkpoint directories are shared)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    # --- checkpoints -----------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Collective: every process calls it with the same (shared) directory and writes its shards."""
        # No OCDBT: its data files get random names; plain zarr arrays are byte-stable.
        handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=False)
        with ocp.Checkpointer(handler) as ckptr:
            ckptr.save(Path(directory).absolute(), self._tree())
        self.barrier("orbax-saved")
        if self.is_primary:
            _scrub_orbax_metadata(Path(directory))

    def restore(self, directory: Path) -> None:
        """Load a checkpoint; any orbax/tensorstore failure is an ``InputError`` naming the directory."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._tree())
        handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=False)
        try:
            with ocp.Checkpointer(handler) as ckptr:
                # Each array lands with the sharding of the state it replaces (FSDP shards, per process).
                restore_args = ocp.checkpoint_utils.construct_restore_args(target)
                tree = ckptr.restore(
                    Path(directory).absolute(),
                    args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args),
                )
        except Exception as e:  # orbax and tensorstore raise many types, with long messages
            raise InputError(f"{directory}: unreadable orbax checkpoint ({_first_line(e)})") from None
        self.state = TrainState(tree["params"], tree["opt_state"], tree.get("ema"))

    def _tree(self) -> dict:
        tree = {"params": self.state.params, "opt_state": self.state.opt_state}
        if self.state.ema is not None:
            tree["ema"] = self.state.ema
        return tree

    # --- inference and export --------------------------------------------------------
    def inference_params(self):
        return self.state.ema if self.state.ema is not None else self.state.params

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.inference_params(), self.rest)

    def gathered_model(self) -> nnx.Module:
        """``model()`` with every param whole on every device (collective under FSDP across hosts)."""
        params = self.inference_params()
        if self.fsdp_devices > 1:
            params = jax.jit(lambda p: p, out_shardings=self._replicated)(params)
        return nnx.merge(self.graphdef, params, self.rest)

    def sample(self, observation: Mapping[str, Any], noise: np.ndarray, num_steps: int) -> np.ndarray:
        # Compiled once per step count: evaluation calls this for every chunk of every rollout.
        if num_steps not in self._jit_sample:
            graphdef, rest, make_obs = self.graphdef, self.rest, self.api.observation

            def sample(params, obs, noise):
                return nnx.merge(graphdef, params, rest).sample_actions(make_obs(obs), noise, num_steps)

            self._jit_sample[num_steps] = jax.jit(sample, out_shardings=self._replicated)
        actions = self._jit_sample[num_steps](self.inference_params(), dict(observation), jnp.asarray(noise))
        return np.asarray(actions)

    def export(self, directory: Path) -> None:
        """``params.npz``: the (EMA) params by openpi path. Collective; process 0 writes."""
        flat = self.api.export(self.gathered_model())
        if self.is_primary:
            directory = Path(directory)
            directory.mkdir(parents=True)
            save_params_npz(directory / "params.npz", flat)


def _tree_all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _scrub_orbax_metadata(directory: Path) -> None:
    for path in sorted(directory.rglob("_CHECKPOINT_METADATA")):
        meta = json.loads(path.read_text())
        meta.update(dict.fromkeys(_TIMESTAMP_KEYS, 0))
        path.write_text(json.dumps(meta, sort_keys=True))
    # Names the absolute path it was written to; a renamed checkpoint does not need it.
    for path in sorted(directory.rglob("commit_success.txt")):
        path.unlink()


def pi0_api() -> ModelApi:
    """pi0 by openpi's parameter tree: ``ModelApi.build(config, rngs)``."""
    from balanced_pi0.backends.jax.params import export_params, load_params
    from balanced_pi0.backends.jax.pi0 import Pi0
    from balanced_pi0.flow import Observation

    return ModelApi(
        build=lambda cfg, rngs: Pi0(cfg, rngs=rngs),
        observation=lambda d: Observation(**d),
        export=export_params,
        load=load_params,
    )
