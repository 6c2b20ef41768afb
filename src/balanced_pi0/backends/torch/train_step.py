"""PyTorch backend of ``balanced_pi0.train``: the optimiser step, EMA, safetensors checkpoints.

Same optimiser as the JAX backend, step for step: global-norm clipping written as
optax writes it (scale by ``clip / norm`` only when ``norm > clip``; torch's
``clip_grad_norm_`` adds 1e-6 to the norm), ``torch.optim.AdamW`` (the same update
as ``optax.adamw``) at ``flow.learning_rate(step)``, and an EMA of the params.

A checkpoint is ``tensors.safetensors`` (params, EMA, AdamW moments) plus
``optimizer.json`` (the per-parameter step counts and hyperparameters).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from balanced_pi0 import config as _config
from balanced_pi0 import model_config
from balanced_pi0.backends import ModelApi
from balanced_pi0.errors import InputError
from balanced_pi0.flow import learning_rate
from balanced_pi0.io import save_params_npz
from balanced_pi0.loss import LossSpec, action_loss


def _to_torch(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_torch(v, device) for k, v in tree.items()}
    return torch.from_numpy(np.ascontiguousarray(tree)).to(device)


def _scalars(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _scalars(v) for k, v in tree.items()}
    return float(tree)


class Backend:
    name = "torch"

    def __init__(self, params: _config.Params, model_api: ModelApi | None = None, device: str = "cpu"):
        self.model_config = model_config.from_params(params)
        self.seed = params.train.seed
        self.opt = params.train.optimizer
        self.spec = LossSpec.from_config(params)
        self.device = torch.device(device)
        self.api = model_api or pi0_api()
        self.rank, self.world = _process_group()

    # --- lifecycle -------------------------------------------------------------------
    def init(self, initial: Mapping[str, np.ndarray] | None = None) -> None:
        self._params_version, self._sample_model = getattr(self, "_params_version", 0) + 1, None
        torch.manual_seed(self.seed)  # parameter initialisation draws from the global generator
        self.model = self.api.build(self.model_config)
        if initial is not None:
            self.api.load(self.model, dict(initial))  # openpi names; the converter consumes its input
        self.model.to(self.device)
        self.model.train()
        opt = self.opt
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=learning_rate(0, opt),
            betas=(opt.b1, opt.b2),
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            foreach=False,  # one code path on every device, for bit-stable CPU runs
        )
        self.ema = None
        if opt.ema_decay is not None:
            self.ema = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self._forward = _LossForward(self.model, self.api.observation)
        if self.world > 1:
            self._forward = torch.nn.parallel.DistributedDataParallel(self._forward)

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, Any]:
        self._params_version += 1
        b = _to_torch(batch, self.device)
        sq_err = self._global_sq_err(self._forward(*_local(b, self.rank, self.world)))
        # The loss of the *global* batch on every rank: padding-aware normalisation and delta
        # weighting count valid steps across ranks, as on one device. Each rank's backward reaches
        # only its own samples; DDP averages over ranks, so the loss is scaled by the world size.
        loss, info = action_loss(sq_err, b["action_is_pad"], b["actions"], self.spec)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.world).backward()
        grad_norm = self._clip_gradients()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, self.opt)
        self.optimizer.step()
        self._update_ema()
        return _scalars({"loss": loss.detach(), "grad_norm": grad_norm, **info})

    def _global_sq_err(self, local: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local.detach())
        parts[self.rank] = local  # the one slice with a graph on this rank
        return torch.cat(parts)

    @torch.no_grad()
    def _clip_gradients(self) -> torch.Tensor:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.sqrt(sum(torch.sum(g.double() * g.double()) for g in grads)).float()
        if norm > self.opt.clip_norm:
            for g in grads:
                g.mul_(self.opt.clip_norm / norm)
        return norm

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.opt.ema_decay
        for n, p in self.model.named_parameters():
            self.ema[n].mul_(d).add_(p.detach(), alpha=1.0 - d)

    def barrier(self, name: str) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    # --- checkpoints -----------------------------------------------------------------
    def save(self, directory: Path) -> None:
        if not self.is_primary:  # DDP keeps every rank's state equal: rank 0 writes it
            return
        directory = Path(directory)
        directory.mkdir(parents=True)
        tensors = {f"params/{n}": p.detach() for n, p in self.model.named_parameters()}
        if self.ema is not None:
            tensors.update({f"ema/{n}": t for n, t in self.ema.items()})
        names = {p: n for n, p in self.model.named_parameters()}
        counts = {}
        for p, st in self.optimizer.state.items():
            tensors[f"opt/{names[p]}/exp_avg"] = st["exp_avg"]
            tensors[f"opt/{names[p]}/exp_avg_sq"] = st["exp_avg_sq"]
            counts[names[p]] = float(st["step"])
        save_file(
            {k: v.contiguous().cpu() for k, v in tensors.items()}, str(directory / "tensors.safetensors")
        )
        hyper = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
        meta = {"step": dict(sorted(counts.items())), "param_group": _jsonable(hyper)}
        (directory / "optimizer.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def restore(self, directory: Path) -> None:
        self._params_version += 1
        directory = Path(directory)
        tensors, meta = _read_checkpoint(directory, self.device)
        expected = {f"params/{n}" for n, _ in self.model.named_parameters()}
        if self.ema is not None:
            expected |= {f"ema/{n}" for n in self.ema}
        missing = sorted(expected - set(tensors))
        if missing:
            raise InputError(f"{directory / 'tensors.safetensors'}: missing tensors {missing[:5]}")
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(tensors[f"params/{n}"])
        if self.ema is not None:
            self.ema = {n: tensors[f"ema/{n}"].clone() for n in self.ema}
        for n, p in self.model.named_parameters():
            if n in meta["step"]:
                self.optimizer.state[p] = {
                    "step": torch.tensor(meta["step"][n], dtype=torch.float32),
                    "exp_avg": tensors[f"opt/{n}/exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"opt/{n}/exp_avg_sq"].clone(),
                }

    @torch.no_grad()
    def all_finite(self) -> bool:
        """Params, EMA and AdamW moments hold no NaN/inf."""
        tensors = [p for p in self.model.parameters()]
        tensors += list(self.ema.values()) if self.ema is not None else []
        for st in self.optimizer.state.values():
            tensors += [st["exp_avg"], st["exp_avg_sq"]]
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    # --- inference and export --------------------------------------------------------
    def inference_model(self) -> torch.nn.Module:
        """The model with the EMA params swapped in (a copy; training state is untouched)."""
        import copy

        model = copy.deepcopy(self.model).eval()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(self.ema[n])
        return model

    @torch.no_grad()
    def sample(self, observation: Mapping[str, Any], noise: np.ndarray, num_steps: int) -> np.ndarray:
        # The EMA copy is made once per set of params, not per call (evaluation samples every chunk).
        key = self._params_version
        if self._sample_model is None or self._sample_model[0] != key:
            self._sample_model = (key, self.inference_model())
        model = self._sample_model[1]
        obs = self.api.observation(_to_torch(observation, self.device))
        actions = model.sample_actions(obs, torch.from_numpy(noise).to(self.device), num_steps)
        return actions.cpu().numpy()

    def export(self, directory: Path) -> None:
        """``params.npz``: the (EMA) params by openpi path, as the JAX backend writes them."""
        if not self.is_primary:
            return
        directory = Path(directory)
        directory.mkdir(parents=True)
        save_params_npz(directory / "params.npz", self.api.export(self.inference_model()))


class _LossForward(torch.nn.Module):
    """``compute_loss`` as a module ``forward``, so that DDP can wrap it."""

    def __init__(self, model: torch.nn.Module, observation: Callable[[Mapping], Any]):
        super().__init__()
        self.model, self._observation = model, observation

    def forward(self, observation, actions, noise, time) -> torch.Tensor:
        return self.model.compute_loss(self._observation(observation), actions, noise, time)


def _local(b: Mapping[str, Any], rank: int, world: int) -> tuple:
    """This rank's contiguous slice of the global batch (the loop hands every rank the same one)."""
    size = len(b["actions"])
    if size % world:
        raise InputError(f"train.batch_size {size} does not split over {world} ranks")
    rows = slice(rank * size // world, (rank + 1) * size // world)

    def cut(x):
        return {k: cut(v) for k, v in x.items()} if isinstance(x, Mapping) else x[rows]

    return cut(b["observation"]), b["actions"][rows], b["noise"][rows], b["time"][rows]


def _process_group() -> tuple[int, int]:
    """(rank, world size); under ``torchrun`` the process group is started here (gloo on the CPU)."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _read_checkpoint(directory: Path, device: torch.device) -> tuple[dict, dict]:
    """``tensors.safetensors`` and ``optimizer.json``; a corrupt file is an ``InputError`` naming it."""
    path = directory / "tensors.safetensors"
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as e:  # SafetensorError, OSError, ...: a truncated or foreign file
        raise InputError(f"{path}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    path = directory / "optimizer.json"
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), dict):
            raise ValueError("no 'step' mapping")
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable optimiser state ({type(e).__name__}: {e})") from None
    return tensors, meta


def _jsonable(d: Mapping) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k not in ("params",)}


def pi0_api() -> ModelApi:
    """pi0 with openpi's parameter meaning: ``ModelApi.build(config)``, params by openpi path."""
    from balanced_pi0.backends.torch.convert import export_params, load_params
    from balanced_pi0.backends.torch.pi0 import Pi0
    from balanced_pi0.flow import Observation

    return ModelApi(build=Pi0, observation=lambda d: Observation(**d), export=export_params, load=load_params)
