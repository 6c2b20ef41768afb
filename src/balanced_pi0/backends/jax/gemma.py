"""Gemma as a mixture of transformers: PaliGemma's LLM plus pi0's action expert.

Every expert has its own weights (attention projections, MLP, norms) but the
experts attend *jointly*: each layer concatenates the queries, keys and values
of all experts' tokens and runs one attention over the whole sequence. The
first expert's weights carry openpi's plain names (``attn/q_einsum``) so that a
PaliGemma checkpoint loads unchanged; expert ``i > 0`` adds the suffix ``_i``.

Layers are stacked on a leading axis (``layers/attn/q_einsum/w`` is
``[depth, heads, width, head_dim]``), as in openpi's checkpoints, and run with
``jax.lax.scan``. Einsum letters follow openpi: B batch, T query length, S key
length, N query heads, K kv heads, G query heads per kv head, H head dim, D width.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from balanced_pi0.model_config import GemmaConfig

# Gemma's masked-logit value (gemma/modules.py); finite so an all-masked row stays finite.
_BIG_NEG = -2.3819763e38
_RMS_EPS = 1e-6

KVCache = tuple[jax.Array, jax.Array]


def expert_name(name: str, i: int) -> str:
    """openpi's naming: the first expert has no suffix, expert i has ``_i``."""
    return name if i == 0 else f"{name}_{i}"


def _lecun(in_axis, out_axis, batch_axis=()):
    return nnx.initializers.lecun_normal(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis)


class Einsum(nnx.Module):
    """A weight ``w`` applied with an einsum equation (params float32, compute in x's dtype)."""

    def __init__(self, shape: tuple[int, ...], init, rngs: nnx.Rngs):
        self.w = nnx.Param(init(rngs.params(), shape, jnp.float32))

    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        return jnp.einsum(eqn, x, self.w[...].astype(x.dtype))


class RMSNorm(nnx.Module):
    """Gemma's RMSNorm: statistics in float32, scaled by ``1 + scale`` (zero-initialised)."""

    def __init__(self, width: int):
        self.scale = nnx.Param(jnp.zeros((width,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        normed = x * jnp.reciprocal(jnp.sqrt(var + _RMS_EPS))
        return (normed * (1 + self.scale[...])).astype(x.dtype)


class FeedForward(nnx.Module):
    """GeGLU: ``gelu(x W_gate) * (x W_up)``, both halves in one ``gating_einsum`` [2, D, F]."""

    def __init__(self, width: int, hidden: int, rngs: nnx.Rngs):
        self.gating_einsum = nnx.Param(_lecun(-2, -1, (0,))(rngs.params(), (2, width, hidden), jnp.float32))
        self.linear = nnx.Param(_lecun(-2, -1)(rngs.params(), (hidden, width), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        w_gating = self.gating_einsum[...].astype(x.dtype)
        gate = jax.nn.gelu(jnp.dot(x, w_gating[0]))  # tanh approximation, as Gemma
        return jnp.dot(gate * jnp.dot(x, w_gating[1]), self.linear[...].astype(x.dtype))


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000) -> jax.Array:
    """Rotary position embedding of ``x [B, L, heads, H]`` at integer ``positions [B, L]`` (half-split)."""
    freq_exponents = (2.0 / x.shape[-1]) * jnp.arange(x.shape[-1] // 2, dtype=jnp.float32)
    timescale = max_wavelength**freq_exponents
    radians = (positions[..., None] / timescale[None, None, :])[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """Joint attention over all experts' tokens, with per-expert Q, KV and output projections."""

    def __init__(self, configs: Sequence[GemmaConfig], rngs: nnx.Rngs):
        self.num_experts = len(configs)
        c0 = configs[0]
        self.num_kv_heads, self.head_dim = c0.num_kv_heads, c0.head_dim
        for i, c in enumerate(configs):
            q = Einsum((c.num_heads, c.width, c.head_dim), _lecun(-2, -1, (0,)), rngs)
            kv = Einsum((2, c.num_kv_heads, c.width, c.head_dim), _lecun(-2, -1, (0, 1)), rngs)
            out = Einsum((c.num_heads, c.head_dim, c.width), _lecun((-3, -2), -1), rngs)
            setattr(self, expert_name("q_einsum", i), q)
            setattr(self, expert_name("kv_einsum", i), kv)
            setattr(self, expert_name("attn_vec_einsum", i), out)

    def _proj(self, name: str, i: int) -> Einsum:
        return getattr(self, expert_name(name, i))

    def __call__(self, xs, positions, mask, kv_cache: KVCache | None):
        """``xs``: per-expert tokens or None; ``mask [B, T, S]``; returns (per-expert outputs, (k, v))."""
        dtype = next(x.dtype for x in xs if x is not None)
        qs, ks, vs = [], [], []
        for i, x in enumerate(xs):
            if x is None:
                continue
            qs.append(self._proj("q_einsum", i)("BTD,NDH->BTNH", x))
            k, v = self._proj("kv_einsum", i)("BSD,2KDH->2BSKH", x)
            ks.append(k)
            vs.append(v)
        q, k, v = (jnp.concatenate(y, axis=1) for y in (qs, ks, vs))
        q = apply_rope(q, positions) * self.head_dim**-0.5
        k = apply_rope(k, positions)
        if kv_cache is not None:  # the cached prefix keys/values come first
            k = jnp.concatenate([kv_cache[0], k], axis=1)
            v = jnp.concatenate([kv_cache[1], v], axis=1)

        batch, length = q.shape[:2]
        q = q.reshape(batch, length, self.num_kv_heads, -1, self.head_dim)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None, :, :], logits, _BIG_NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(batch, length, -1, self.head_dim)

        out, start = [], 0
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            end = start + x.shape[1]
            out.append(self._proj("attn_vec_einsum", i)("BTNH,NHD->BTD", encoded[:, start:end]))
            start = end
        return out, (k, v)


class Block(nnx.Module):
    """Pre-norm transformer layer: joint attention, then each expert's own GeGLU MLP."""

    def __init__(self, configs: Sequence[GemmaConfig], rngs: nnx.Rngs):
        self.attn = Attention(configs, rngs)
        for i, c in enumerate(configs):
            setattr(self, expert_name("pre_attention_norm", i), RMSNorm(c.width))
            setattr(self, expert_name("pre_ffw_norm", i), RMSNorm(c.width))
            setattr(self, expert_name("mlp", i), FeedForward(c.width, c.mlp_dim, rngs))

    def _part(self, name: str, i: int):
        return getattr(self, expert_name(name, i))

    def __call__(self, xs, kv_cache, positions, mask):
        normed = [None if x is None else self._part("pre_attention_norm", i)(x) for i, x in enumerate(xs)]
        attn_out, kv = self.attn(normed, positions, mask, kv_cache)
        xs = [None if x is None else x + y for x, y in zip(xs, attn_out, strict=True)]
        out = []
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            out.append(x + self._part("mlp", i)(self._part("pre_ffw_norm", i)(x)))
        return out, kv


class Embedder(nnx.Module):
    """Token embedding of the first expert, scaled by ``sqrt(width)`` as Gemma does."""

    def __init__(self, vocab_size: int, width: int, rngs: nnx.Rngs):
        self.input_embedding = nnx.Param(nnx.initializers.normal()(rngs.params(), (vocab_size, width)))

    def encode(self, tokens: jax.Array) -> jax.Array:
        x = self.input_embedding[...][(tokens,)]
        return x * jnp.sqrt(x.shape[-1]).astype(x.dtype)


def stacked(make, depth: int, rngs: nnx.Rngs) -> nnx.Module:
    """``depth`` copies of ``make(rngs)`` with every param stacked on a new leading axis."""

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs: nnx.Rngs):
        return make(rngs)

    return create(rngs)


def scan_layers(layers: nnx.Module, carry, per_layer, fn, remat: bool = False):
    """Run ``fn(layer, carry, per_layer_slice) -> (carry, out)`` over stacked ``layers``.

    With ``remat`` a layer keeps only its inputs for the backward pass (openpi's
    ``nothing_saveable`` policy): memory for one layer's activations instead of all.
    """
    graphdef, state = nnx.split(layers)

    def body(carry, xs):
        layer_state, sliced = xs
        return fn(nnx.merge(graphdef, layer_state), carry, sliced)

    if remat:
        body = jax.checkpoint(body, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
    return jax.lax.scan(body, carry, (state, per_layer))


class Gemma(nnx.Module):
    """The mixture of transformers. Call with one token array (or None) per expert."""

    def __init__(
        self, configs: Sequence[GemmaConfig], vocab_size: int, dtype: str, rngs: nnx.Rngs, remat: bool = False
    ):
        _check_joint_attention(configs)
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        self.embedder = Embedder(vocab_size, configs[0].width, rngs)
        self.layers = stacked(lambda r: Block(configs, r), configs[0].depth, rngs)
        for i, c in enumerate(configs):
            setattr(self, expert_name("final_norm", i), RMSNorm(c.width))

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embedder.encode(tokens).astype(self.dtype)

    def __call__(
        self,
        xs: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        kv_cache: KVCache | None = None,
    ) -> tuple[list[jax.Array | None], KVCache]:
        """``mask [B, T, S]``: may query token t see key s. Returns outputs and the per-layer (k, v)."""
        xs = [None if x is None else x.astype(self.dtype) for x in xs]

        def layer(block, xs, cache):
            return block(xs, cache, positions, mask)

        xs, kv = scan_layers(self.layers, xs, kv_cache, layer, self.remat)
        outs = [
            None if x is None else getattr(self, expert_name("final_norm", i))(x) for i, x in enumerate(xs)
        ]
        return outs, kv


def _check_joint_attention(configs: Sequence[GemmaConfig]) -> None:
    c0 = configs[0]
    for c in configs:
        if (c.depth, c.num_heads, c.num_kv_heads, c.head_dim) != (
            c0.depth,
            c0.num_heads,
            c0.num_kv_heads,
            c0.head_dim,
        ):
            raise ValueError(f"experts must share depth and attention heads for joint attention: {configs}")
        if c.num_kv_heads == c.num_heads:
            raise ValueError(
                "multi-head (non-grouped) attention uses openpi's qkv_einsum, not supported here"
            )
