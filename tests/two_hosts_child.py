"""One short toy training per backend, in a process of its own: ``test_determinism`` runs it as
two hosts would (different instruction-set settings), with and without the host pins.

Usage: ``python two_hosts_child.py pinned|unpinned``; prints ``{backend: {params: sha256, losses}}``.
The pins must be applied before numpy, torch and jax load, as ``bpi0`` does: so this file imports
nothing else first.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from balanced_pi0 import determinism

MODE = sys.argv[1]
if MODE == "unpinned":  # the environment as it was before the host pins (every other flag kept)
    determinism.DETERMINISM_ENV = determinism.without_host_pins()
determinism.apply()

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import test_train  # noqa: E402
from balanced_pi0 import backends, flow  # noqa: E402

HIDDEN = 64


def jax_model(config, rngs):
    """A flow model with the nonlinearities of pi0 (GELU, softmax, tanh): their vectorised kernels are
    what differs between instruction sets, a linear model's matmul alone does not show it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    class MlpFlow(nnx.Module):
        def __init__(self):
            d, h = config.action_dim, config.action_horizon
            self.h, self.d = h, d
            self.inp = nnx.Linear(h * d + d + 1, HIDDEN, rngs=rngs)
            self.out = nnx.Linear(HIDDEN, h * d, rngs=rngs)

        def velocity(self, obs, x_t, t):
            b = x_t.shape[0]
            z = self.inp(jnp.concatenate([x_t.reshape(b, -1), obs["state"], t[:, None]], axis=-1))
            z = jax.nn.gelu(z) * jax.nn.softmax(z, -1) + jnp.tanh(z)
            return self.out(z).reshape(b, self.h, self.d)

        def compute_loss(self, obs, actions, noise, time):
            t = time[:, None, None]
            return (self.velocity(obs, t * noise + (1 - t) * actions, time) - (noise - actions)) ** 2

    return MlpFlow()


def torch_model(config):
    import torch
    from torch.nn import functional

    class MlpFlow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            d, h = config.action_dim, config.action_horizon
            self.h, self.d = h, d
            self.inp = torch.nn.Linear(h * d + d + 1, HIDDEN)
            self.out = torch.nn.Linear(HIDDEN, h * d)

        def velocity(self, obs, x_t, t):
            b = x_t.shape[0]
            z = self.inp(torch.cat([x_t.reshape(b, -1), obs["state"], t[:, None]], dim=-1))
            z = functional.gelu(z) * torch.softmax(z, -1) + torch.tanh(z)
            return self.out(z).reshape(b, self.h, self.d)

        def compute_loss(self, obs, actions, noise, time):
            t = time[:, None, None]
            return (self.velocity(obs, t * noise + (1 - t) * actions, time) - (noise - actions)) ** 2

    return MlpFlow()


def api(backend: str):
    if backend == "jax":
        from flax import nnx

        from balanced_pi0.backends import ModelApi

        def export(model):
            pure = nnx.state(model, nnx.Param).to_pure_dict()
            return {f"{layer}/{k}": np.asarray(v) for layer, d in pure.items() for k, v in d.items()}

        return ModelApi(build=jax_model, observation=dict, export=export, load=None)
    from balanced_pi0.backends import ModelApi

    def export_torch(model):
        return {n: p.detach().numpy() for n, p in model.named_parameters()}

    return ModelApi(build=torch_model, observation=dict, export=export_torch, load=None)


def run(backend: str) -> dict[str, str]:
    """Three optimiser steps of the toy through the backend's own train step (no checkpoints or logs:
    their writers cost seconds of imports and hold nothing the params and losses do not)."""
    params = test_train.make_params(backend)
    episodes = test_train.make_episodes()
    io = test_train.policy_io(episodes)
    loader = test_train.ToyLoader(episodes, np.arange(6), 0).batches()
    b = backends.make_backend(params, model_api=api(backend))
    b.init()
    losses = []
    for step in range(3):
        batch = io.model_batch(next(loader))
        batch["noise"], batch["time"] = flow.sample_noise_time(0, step, 3, test_train.HORIZON, 32)
        losses.append(b.train_step(batch, step)["loss"])
    out = Path(tempfile.mkdtemp()) / "final"
    b.export(out)  # the run's final/params.npz, as the stage writes it
    return {"params": hashlib.sha256((out / "params.npz").read_bytes()).hexdigest(), "losses": repr(losses)}


print(json.dumps({b: run(b) for b in ("jax", "torch")}))
