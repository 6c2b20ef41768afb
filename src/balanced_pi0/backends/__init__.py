"""Model backends: pi0 in JAX (flax nnx) and in PyTorch, one architecture, one parameter meaning.

Both backends have the same shape, under the same names: ``<backend>.pi0.Pi0`` (built from
``gemma.Gemma`` and ``siglip.Siglip``), ``<backend>.train_step.Backend`` (one optimiser step,
EMA, the checkpoint format) and ``<backend>.train_step.pi0_api`` (the model it trains). What
is not framework code (flow matching, the loss, the schedule) lives in ``balanced_pi0.flow``
and ``balanced_pi0.loss``; this module only names the contract and picks the backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from balanced_pi0.errors import InputError

if TYPE_CHECKING:
    from balanced_pi0.config import Params


class Backend(Protocol):
    """What a framework provides. Batches are numpy dicts from ``PolicyIO.model_batch`` plus
    ``noise`` f32[B, H, action_dim] and ``time`` f32[B] (``flow.sample_noise_time``)."""

    name: str
    #: the process that writes checkpoints, logs and the final params (rank 0 of a distributed run)
    is_primary: bool

    def init(self, initial: Mapping[str, np.ndarray] | None = None) -> None:
        """Fresh model (from the params seed, or ``initial`` params by openpi path), optimiser and EMA."""

    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, Any]:
        """One optimiser step at learning rate ``flow.learning_rate(step)``; returns scalars:
        ``loss``, ``grad_norm``, ``pad_fraction`` and a ``group_loss`` dict."""

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


@dataclass(frozen=True)
class ModelApi:
    """The model a backend trains: ``build`` from the model config (and, in JAX, ``nnx.Rngs``; in
    PyTorch under the seeded global generator), fed ``observation(PolicyIO's dict)``, exported and
    loaded as ``{openpi path: array}``. Tests swap in a toy model through it."""

    build: Callable[..., Any]
    observation: Callable[[Mapping], Any]
    export: Callable[[Any], dict[str, np.ndarray]]
    load: Callable[[Any, Mapping[str, np.ndarray]], None] | None


def make_backend(params: Params, **kwargs) -> Backend:
    """``balanced_pi0.backends.<params.train.backend>.train_step.Backend(params, **kwargs)``."""
    module = importlib.import_module(f"balanced_pi0.backends.{params.train.backend}.train_step")
    return module.Backend(params, **kwargs)


def init_backend(backend: Backend, initial: Mapping[str, np.ndarray] | None, source: str) -> None:
    """``backend.init``; params that do not fit the model config are an error naming their file."""
    try:
        backend.init(initial)
    except InputError as e:
        if initial is None:
            raise
        raise InputError(f"{source}: {e}") from None
