"""Parameters both ways between openpi's JAX tree and this package's torch ``state_dict``.

The JAX side is a flat dict keyed by openpi's ``/``-joined paths
(``PaliGemma/llm/layers/attn/q_einsum/w``), layers stacked on axis 0 (nn.scan), the
action expert's weights suffixed ``_1``. The torch side has one module per layer and
``nn.Linear`` weights stored [out, in].

Memory: both directions *consume* their input dict, popping each entry before
converting it, so a caller that holds no other reference frees the source while
the target grows: at most one extra copy of the weights exists at any moment.
``jax_to_torch`` returns views of the numpy arrays wherever the layout allows
(transposes, reshapes, layer slices; the Q/K/V projections need a copy);
``torch_to_jax`` always returns fresh arrays (stacking layers copies anyway), so
the result never aliases a live torch model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch

from balanced_pi0.backends.torch.pi0 import Pi0
from balanced_pi0.errors import InputError
from balanced_pi0.model_config import Pi0Config

Array = torch.Tensor


# --- layout transforms: one JAX (per-layer) array <-> one torch tensor ------------------
# Each pair is (to_torch(x), to_jax(t, jax_shape)); to_jax(to_torch(x), x.shape) == x exactly.
def _flat() -> tuple[Callable, Callable]:
    """Per-head bias [heads, H] <-> Linear bias [heads·H]."""
    return (lambda x: x.reshape(-1) if x.dim() > 1 else x), (lambda t, shape: t.reshape(shape))


def _identity() -> tuple[Callable, Callable]:
    return (lambda x: x), (lambda t, shape: t.reshape(shape))


def _dense(n_in: int) -> tuple[Callable, Callable]:
    """Kernel [in..., out...] (first ``n_in`` axes are inputs) <-> Linear weight [out, in]."""

    def to_torch(x: Array) -> Array:
        return x.reshape(math.prod(x.shape[:n_in]), -1).T

    return to_torch, (lambda t, shape: t.T.reshape(shape))


def _heads_first() -> tuple[Callable, Callable]:
    """Gemma's q/k/v einsum [heads, D, H] <-> Linear weight [heads·H, D]."""

    def to_torch(x: Array) -> Array:
        return x.permute(0, 2, 1).reshape(-1, x.shape[1])

    def to_jax(t: Array, shape: tuple[int, ...]) -> Array:
        heads, d, h = shape
        return t.reshape(heads, h, d).permute(0, 2, 1)

    return to_torch, to_jax


def _conv() -> tuple[Callable, Callable]:
    """flax Conv kernel [p, p, C_in, C_out] <-> torch Conv2d weight [C_out, C_in, p, p]."""
    return (lambda x: x.permute(3, 2, 0, 1)), (lambda t, shape: t.permute(2, 3, 1, 0))


@dataclass(frozen=True)
class Rule:
    """One JAX array <-> one or more torch tensors.

    ``torch`` names take ``{i}`` for the layer when ``stacked``; with several names,
    the JAX array (per layer) has a leading axis that enumerates them (kv_einsum: K, V).
    """

    jax: str
    torch: tuple[str, ...]
    shape: tuple[int, ...]
    transform: tuple[Callable, Callable]
    stacked: bool = False

    def torch_names(self) -> Iterator[str]:
        for i in range(self.shape[0] if self.stacked else 1):
            for name in self.torch:
                yield name.format(i=i)


def rules(config: Pi0Config) -> list[Rule]:
    """The complete name/shape map for ``config``; its JAX side is openpi's parameter tree."""
    return [*_vision_rules(config), *_llm_rules(config), *_head_rules(config)]


def _vision_rules(config: Pi0Config) -> list[Rule]:
    c, width = config.siglip, config.llm.width
    p, n, w, heads = c.patch_size, c.depth, c.width, c.num_heads
    img, blk, tb = "PaliGemma/img", "PaliGemma/img/Transformer/encoderblock", "vision.layers.{i}"
    tokens = (config.image_resolution // p) ** 2
    out = [
        Rule(f"{img}/embedding/kernel", ("vision.patch_embed.weight",), (p, p, 3, w), _conv()),
        Rule(f"{img}/embedding/bias", ("vision.patch_embed.bias",), (w,), _identity()),
        Rule(f"{img}/pos_embedding", ("vision.pos_embed",), (1, tokens, w), _identity()),
        Rule(f"{img}/Transformer/encoder_norm/scale", ("vision.norm.weight",), (w,), _identity()),
        Rule(f"{img}/Transformer/encoder_norm/bias", ("vision.norm.bias",), (w,), _identity()),
        Rule(f"{img}/head/kernel", ("vision.head.weight",), (w, width), _dense(1)),
        Rule(f"{img}/head/bias", ("vision.head.bias",), (width,), _identity()),
    ]
    for j, norm in ((0, "norm1"), (1, "norm2")):
        for jax_name, torch_name in (("scale", "weight"), ("bias", "bias")):
            out.append(
                Rule(
                    f"{blk}/LayerNorm_{j}/{jax_name}",
                    (f"{tb}.{norm}.{torch_name}",),
                    (n, w),
                    _identity(),
                    True,
                )
            )
    for j, (fc, d_in, d_out) in enumerate((("fc1", w, c.mlp_dim), ("fc2", c.mlp_dim, w))):
        dense = f"{blk}/MlpBlock_0/Dense_{j}"
        out.append(Rule(f"{dense}/kernel", (f"{tb}.mlp.{fc}.weight",), (n, d_in, d_out), _dense(1), True))
        out.append(Rule(f"{dense}/bias", (f"{tb}.mlp.{fc}.bias",), (n, d_out), _identity(), True))
    mha = f"{blk}/MultiHeadDotProductAttention_0"
    for jax_name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        shape = (n, w, heads, w // heads)
        out.append(Rule(f"{mha}/{jax_name}/kernel", (f"{tb}.attn.{proj}.weight",), shape, _dense(1), True))
        out.append(
            Rule(f"{mha}/{jax_name}/bias", (f"{tb}.attn.{proj}.bias",), (n, heads, w // heads), _flat(), True)
        )
    shape = (n, heads, w // heads, w)
    out.append(Rule(f"{mha}/out/kernel", (f"{tb}.attn.out_proj.weight",), shape, _dense(2), True))
    out.append(Rule(f"{mha}/out/bias", (f"{tb}.attn.out_proj.bias",), (n, w), _identity(), True))
    return out


def _llm_rules(config: Pi0Config) -> list[Rule]:
    llm = "PaliGemma/llm"
    out = [
        Rule(
            f"{llm}/embedder/input_embedding",
            ("llm.embed_tokens.weight",),
            (config.vocab_size, config.llm.width),
            _identity(),
        )
    ]
    for e, c in enumerate((config.llm, config.expert)):
        s, n, tl = ("" if e == 0 else f"_{e}"), c.depth, f"llm.experts.{e}.layers.{{i}}"
        d, heads, kv, h = c.width, c.num_heads, c.num_kv_heads, c.head_dim
        attn, mlp, lyr = f"{llm}/layers/attn", f"{llm}/layers/mlp{s}", f"{llm}/layers"
        out += [
            Rule(
                f"{attn}/q_einsum{s}/w", (f"{tl}.attn.q_proj.weight",), (n, heads, d, h), _heads_first(), True
            ),
            Rule(
                f"{attn}/kv_einsum{s}/w",
                (f"{tl}.attn.k_proj.weight", f"{tl}.attn.v_proj.weight"),
                (n, 2, kv, d, h),
                _heads_first(),
                True,
            ),
            Rule(
                f"{attn}/attn_vec_einsum{s}/w",
                (f"{tl}.attn.o_proj.weight",),
                (n, heads, h, d),
                _dense(2),
                True,
            ),
            Rule(
                f"{mlp}/gating_einsum",
                (f"{tl}.mlp.gate_proj.weight", f"{tl}.mlp.up_proj.weight"),
                (n, 2, d, c.mlp_dim),
                _dense(1),
                True,
            ),
            Rule(f"{mlp}/linear", (f"{tl}.mlp.down_proj.weight",), (n, c.mlp_dim, d), _dense(1), True),
            Rule(
                f"{lyr}/pre_attention_norm{s}/scale",
                (f"{tl}.pre_attention_norm.weight",),
                (n, d),
                _identity(),
                True,
            ),
            Rule(f"{lyr}/pre_ffw_norm{s}/scale", (f"{tl}.pre_ffw_norm.weight",), (n, d), _identity(), True),
            Rule(f"{llm}/final_norm{s}/scale", (f"llm.experts.{e}.final_norm.weight",), (d,), _identity()),
        ]
    return out


def _head_rules(config: Pi0Config) -> list[Rule]:
    a, w = config.action_dim, config.expert.width
    shapes = {
        "state_proj": (a, w),
        "action_in_proj": (a, w),
        "action_time_mlp_in": (2 * w, w),
        "action_time_mlp_out": (w, w),
        "action_out_proj": (w, a),
    }
    out = []
    for name, (d_in, d_out) in shapes.items():
        out.append(Rule(f"{name}/kernel", (f"{name}.weight",), (d_in, d_out), _dense(1)))
        out.append(Rule(f"{name}/bias", (f"{name}.bias",), (d_out,), _identity()))
    return out


def param_shapes(config: Pi0Config) -> dict[str, tuple[int, ...]]:
    """openpi's parameter tree for ``config``: path -> shape."""
    return {r.jax: r.shape for r in rules(config)}


def torch_param_shapes(config: Pi0Config) -> dict[str, tuple[int, ...]]:
    """The torch names and shapes the rules produce (traced on the meta device, no memory)."""
    out = {}
    for rule in rules(config):
        layer = torch.empty(rule.shape[1:] if rule.stacked else rule.shape, device="meta")
        parts = layer.unbind(0) if len(rule.torch) > 1 else (layer,)
        for j, name in enumerate(rule.torch_names()):
            out[name] = tuple(rule.transform[0](parts[j % len(parts)]).shape)
    return out


# --- conversion ---------------------------------------------------------------------------
def _check_names(got: MutableMapping, expected: dict[str, tuple[int, ...]], side: str) -> None:
    missing = sorted(set(expected) - set(got))
    unknown = sorted(set(got) - set(expected))
    if missing or unknown:
        raise InputError(f"{side} params do not match the model: missing {missing}, unknown {unknown}")
    bad = [f"{k}: {tuple(got[k].shape)} != {s}" for k, s in expected.items() if tuple(got[k].shape) != s]
    if bad:
        raise InputError(f"{side} params have wrong shapes: {bad}")


def _from_numpy(a) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == ml_dtypes.bfloat16:  # numpy has no bf16; share the bits
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16)
    if not a.flags.writeable:  # e.g. a jax array's buffer; torch needs writable memory
        a = a.copy()
    return torch.from_numpy(a)


def _to_numpy(t: torch.Tensor, fresh: bool) -> np.ndarray:
    """``t`` as a numpy array that owns its memory (copied unless ``fresh``: made by us, unshared)."""
    t = t.detach().cpu().contiguous()
    a = t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
    return a if fresh else a.copy()


def jax_to_torch(flat: MutableMapping[str, np.ndarray], config: Pi0Config) -> dict[str, torch.Tensor]:
    """openpi params (flat '/' paths) -> torch ``state_dict``; ``flat`` is emptied as it is read."""
    table = rules(config)
    _check_names(flat, {r.jax: r.shape for r in table}, "JAX")
    out: dict[str, torch.Tensor] = {}
    for rule in table:
        source = _from_numpy(flat.pop(rule.jax))
        layers = source.unbind(0) if rule.stacked else (source,)
        names = rule.torch_names()
        for layer in layers:
            parts = layer.unbind(0) if len(rule.torch) > 1 else (layer,)
            for part in parts:
                out[next(names)] = rule.transform[0](part)
        del source, layers  # the last reference: a copied source is freed here
    return out


def torch_to_jax(state_dict: MutableMapping[str, torch.Tensor], config: Pi0Config) -> dict[str, np.ndarray]:
    """torch ``state_dict`` -> openpi params (flat '/' paths); ``state_dict`` is emptied as it is read."""
    table = rules(config)
    _check_names(state_dict, torch_param_shapes(config), "torch")
    out: dict[str, np.ndarray] = {}
    for rule in table:
        per_layer = rule.shape[1:] if rule.stacked else rule.shape
        part_shape = per_layer[1:] if len(rule.torch) > 1 else per_layer
        names = list(rule.torch_names())
        parts = [rule.transform[1](state_dict.pop(n), part_shape) for n in names]
        k = len(rule.torch)
        layers = [torch.stack(parts[i : i + k]) if k > 1 else parts[i] for i in range(0, len(parts), k)]
        fresh = rule.stacked or k > 1  # torch.stack made it: nothing else holds this memory
        out[rule.jax] = _to_numpy(torch.stack(layers) if rule.stacked else layers[0], fresh=fresh)
    return out


def load_params(model: Pi0, flat: MutableMapping[str, np.ndarray]) -> None:
    """Copy openpi params into ``model`` (a ``Pi0``) by name; ``flat`` is consumed."""
    model.load_state_dict(jax_to_torch(flat, model.config), strict=True)


def pi0_from_jax(flat: MutableMapping[str, np.ndarray], config: Pi0Config) -> Pi0:
    """A ``Pi0`` whose params *are* the converted arrays (views where possible); ``flat`` is consumed.

    The model is built on the meta device and the tensors are assigned, not copied, so
    loading a full-size checkpoint costs no second copy of the weights.
    """
    with torch.device("meta"):
        model = Pi0(config)
    model.load_state_dict(jax_to_torch(flat, config), strict=True, assign=True)
    return model


def export_params(model: Pi0) -> dict[str, np.ndarray]:
    """``model``'s params as openpi's flat JAX tree (fresh float arrays)."""
    return torch_to_jax(dict(model.state_dict()), model.config)
