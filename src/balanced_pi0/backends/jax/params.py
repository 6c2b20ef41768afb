"""pi0 parameters by openpi name: export, strict load, abstract shapes.

Names are ``/``-joined paths of the model's nnx state, which are exactly the
paths of an openpi pi0 checkpoint's ``params`` tree
(``PaliGemma/llm/layers/attn/q_einsum/w``, ``_1`` for the action expert, layers
stacked on the first axis). Loading is all-or-nothing: any unknown, missing or
mis-shaped name is an ``InputError`` that lists them, never a partial load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from balanced_pi0.backends.jax.pi0 import Pi0
from balanced_pi0.errors import InputError
from balanced_pi0.model_config import Pi0Config


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: Mapping[str, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _named_params(model: nnx.Module) -> dict:
    return _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def export_params(model: Pi0) -> dict[str, np.ndarray]:
    """Every parameter as a NumPy array, keyed by its openpi path."""
    return {path: np.asarray(value) for path, value in _named_params(model).items()}


def param_shapes(config: Pi0Config) -> dict[str, tuple[int, ...]]:
    """Parameter shapes by openpi path, from an abstract model (nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: Pi0(config, nnx.Rngs(0)))
    return {path: tuple(value.shape) for path, value in _named_params(abstract).items()}


def read_openpi_params(path: str | Path) -> dict[str, np.ndarray]:
    """The ``params`` of an openpi checkpoint directory (orbax), as NumPy arrays by openpi path.

    Reads released checkpoints (``<ckpt>/params``) and openpi training checkpoints alike; the
    latter end every path in ``value`` (nnx.State's leaf), which is dropped as openpi does.
    """
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    if not path.is_dir():
        raise InputError(f"openpi checkpoint not found: {path}")
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            item = ckptr.metadata(path).item_metadata
            if item is None or "params" not in item:
                keys = sorted(item) if item is not None else []
                raise InputError(f"{path} holds no 'params' tree (top-level keys: {keys})")
            item = {"params": item["params"]}
            restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), item)
            args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
            params = ckptr.restore(path, args)["params"]
    except InputError:
        raise
    except Exception as e:  # orbax and tensorstore raise many types, with long messages
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise InputError(f"{path}: unreadable openpi checkpoint ({type(e).__name__}: {text})") from None
    flat = _flatten(params)
    if all(p.endswith("/value") for p in flat):
        flat = {p.removesuffix("/value"): v for p, v in flat.items()}
    from balanced_pi0.io import check_params

    check_params(path, flat)
    return flat


def load_params(model: Pi0, flat: Mapping[str, np.ndarray | jax.Array]) -> None:
    """Set every parameter of ``model`` from ``flat`` (openpi path -> array), in place.

    Values are cast to the model's parameter dtype (float32), so bf16 checkpoints load too.
    """
    current = _named_params(model)
    unknown = sorted(set(flat) - set(current))
    missing = sorted(set(current) - set(flat))
    if unknown or missing:
        raise InputError(f"pi0 params do not match the model: unknown {unknown}, missing {missing}")
    wrong = [
        f"{path}: got {tuple(np.shape(flat[path]))}, model has {tuple(value.shape)}"
        for path, value in current.items()
        if tuple(np.shape(flat[path])) != tuple(value.shape)
    ]
    if wrong:
        raise InputError("pi0 param shapes do not match the model: " + "; ".join(wrong))
    values = {path: jnp.asarray(flat[path], dtype=current[path].dtype) for path in current}
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, _unflatten(values))
    nnx.update(model, state)
