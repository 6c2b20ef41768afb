"""SigLIP vision tower as pi0 uses it: ViT, learned position embedding, no pooling, a linear head.

Same meaning as openpi's ``siglip.py`` (big_vision's ViT) with ``pool_type="none"``:
every patch token comes out, projected by ``head`` to the language model's width.
LayerNorm eps 1e-6 and the tanh-approximated GELU, as flax's defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from balanced_pi0.model_config import SiglipConfig


class SelfAttention(nn.Module):
    """flax ``MultiHeadDotProductAttention`` (biased Q/K/V/out projections)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        head_dim = w // self.num_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, head_dim)

        q = heads(self.q_proj(x)) / torch.tensor(head_dim**0.5, dtype=x.dtype)
        k, v = heads(self.k_proj(x)), heads(self.v_proj(x))
        probs = torch.softmax(torch.einsum("bqnh,bknh->bnqk", q, k).float(), dim=-1).to(v.dtype)
        return self.out_proj(torch.einsum("bnqk,bknh->bqnh", probs, v).reshape(b, t, w))


class MlpBlock(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Encoder1DBlock(nn.Module):
    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.attn = SelfAttention(cfg.width, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.mlp = MlpBlock(cfg.width, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Siglip(nn.Module):
    """Images [N, 3, H, W] in [-1, 1] -> tokens [N, (H/p)·(W/p), out_width]."""

    def __init__(self, cfg: SiglipConfig, image_resolution: int, out_width: int):
        super().__init__()
        p = cfg.patch_size
        num_patches = (image_resolution // p) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.width, kernel_size=p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, cfg.width))
        self.layers = nn.ModuleList(Encoder1DBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, out_width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # openpi extracts patches and adds the position embedding in float32 even in bf16 runs.
        with torch.autocast(images.device.type, enabled=False):
            x = self.patch_embed(images.float()).flatten(2).transpose(1, 2) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))
