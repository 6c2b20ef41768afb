"""Gemma as a mixture of transformers: one weight set per expert, one joint attention.

pi0 runs two Gemma experts side by side (PaliGemma's language model on the image and
prompt tokens, the action expert on the state and action tokens). Every layer
computes Q/K/V with each expert's own weights, concatenates the tokens, attends
over all of them at once, then splits them back for each expert's output
projection and MLP. Same meaning as openpi's ``gemma.py`` (big_vision's Gemma):
RMSNorm with ``1 + scale``, RoPE, grouped-query attention with the masked logits
set to a large negative number (so a fully masked row stays finite), and a
GeGLU MLP with the tanh-approximated GELU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from balanced_pi0.model_config import GemmaConfig

#: openpi's masked-logit value (gemma/modules.py); finite, so padded rows stay finite.
BIG_NEG = -2.3819763e38

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    """RMSNorm with Gemma's ``x * (1 + weight)``; statistics in float32."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        var = x32.square().mean(-1, keepdim=True)
        return (x32 * torch.rsqrt(var + self.eps) * (1 + self.weight.float())).to(x.dtype)


class Attention(nn.Module):
    """One expert's Q/K/V/O projections; the attention itself is joint (see ``joint_attention``)."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.num_heads, c.head_dim)
        k = self.k_proj(x).view(b, t, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).view(b, t, c.num_kv_heads, c.head_dim)
        return q, k, v


class FeedForward(nn.Module):
    """GeGLU: ``down(gelu_tanh(gate(x)) * up(x))``."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.pre_attention_norm = RMSNorm(cfg.width)
        self.attn = Attention(cfg)
        self.pre_ffw_norm = RMSNorm(cfg.width)
        self.mlp = FeedForward(cfg)


class Expert(nn.Module):
    """One expert's weights for every layer, plus its final norm."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_norm = RMSNorm(cfg.width)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, max_wavelength: float = 10_000.0) -> torch.Tensor:
    """Rotary embedding of ``x`` [B, T, heads, H] at integer ``positions`` [B, T] (half-split layout)."""
    h = x.shape[-1]
    freq_exponents = (2.0 / h) * torch.arange(h // 2, dtype=torch.float32, device=x.device)
    timescale = max_wavelength**freq_exponents
    radians = (positions.float()[..., None] / timescale)[..., None, :]
    sin, cos = torch.sin(radians), torch.cos(radians)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: q [B,T,N,H], k/v [B,S,K,H], mask bool [B,T,S] -> [B,T,N*H].

    Logits and softmax in float32, as openpi; masked logits get ``BIG_NEG`` rather than
    -inf so that a query with no visible key (a padded token) stays finite.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q = q.view(b, t, kv_heads, n // kv_heads, h)
    logits = torch.einsum("btkgh,bskh->bkgts", q, k).float()
    logits = torch.where(mask[:, None, None], logits, BIG_NEG)
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    return torch.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n * h)


class Gemma(nn.Module):
    """PaliGemma's Gemma (expert 0, with the token embedding) and the action expert (expert 1)."""

    def __init__(self, configs: tuple[GemmaConfig, ...], vocab_size: int):
        super().__init__()
        first = configs[0]
        for c in configs[1:]:
            # Joint attention needs equal depth and the same head layout across experts.
            same = (c.depth, c.num_heads, c.num_kv_heads, c.head_dim)
            if same != (first.depth, first.num_heads, first.num_kv_heads, first.head_dim):
                raise ValueError(f"experts disagree on depth/heads/head_dim: {configs}")
        self.embed_tokens = nn.Embedding(vocab_size, first.width)
        self.experts = nn.ModuleList(Expert(c) for c in configs)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        return x * torch.tensor(math.sqrt(self.experts[0].cfg.width), dtype=x.dtype)

    def forward(
        self,
        xs: list[torch.Tensor | None],
        positions: torch.Tensor,
        mask: torch.Tensor,
        kv_cache: KVCache | None = None,
    ) -> tuple[list[torch.Tensor | None], KVCache]:
        """Run the experts whose input is not None; ``mask`` [B, T, S] covers cache + new tokens.

        Returns each expert's normed output and, per layer, the (K, V) of all tokens
        attended to (cache first), after RoPE: the cache for a later call.
        """
        active = [i for i, x in enumerate(xs) if x is not None]
        xs = list(xs)
        lengths = [xs[i].shape[1] for i in active]
        head_dim = self.experts[active[0]].cfg.head_dim
        new_cache: KVCache = []
        for depth in range(len(self.experts[0].layers)):
            layers = {i: self.experts[i].layers[depth] for i in active}
            qkv = [layers[i].attn.qkv(layers[i].pre_attention_norm(xs[i])) for i in active]
            q, k, v = (torch.cat(parts, dim=1) for parts in zip(*qkv, strict=True))
            q = apply_rope(q, positions) * torch.tensor(head_dim**-0.5, dtype=q.dtype)
            k = apply_rope(k, positions)
            if kv_cache is not None:
                k = torch.cat([kv_cache[depth][0], k], dim=1)
                v = torch.cat([kv_cache[depth][1], v], dim=1)
            new_cache.append((k, v))
            encoded = joint_attention(q, k, v, mask).split(lengths, dim=1)
            for i, enc in zip(active, encoded, strict=True):
                x = xs[i] + layers[i].attn.o_proj(enc)
                xs[i] = x + layers[i].mlp(layers[i].pre_ffw_norm(x))
        outs = [self.experts[i].final_norm(x) if x is not None else None for i, x in enumerate(xs)]
        return outs, new_cache
