"""pi0 in PyTorch, with the meaning of openpi's JAX ``pi0.py`` (non-pi0.5 variant).

Prefix: SigLIP tokens of every camera, then the embedded prompt; all of them attend
to each other (masked where a camera or prompt token is absent). Suffix: one state
token, then ``action_horizon`` action tokens that mix the noisy action with a
sinusoidal embedding of the flow time through an MLP. The prefix never attends to
the suffix, the state token never attends to the actions (``make_attn_mask``).
Flow matching (``x_t``, the target, the masks, the time embedding, Euler sampling)
is ``balanced_pi0.flow``, shared with the JAX model.

Images come channels-last in [-1, 1] as on the JAX side. ``config.dtype ==
"bfloat16"`` runs the matmuls under bf16 autocast while the params stay float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from balanced_pi0.backends.torch.gemma import Gemma, KVCache
from balanced_pi0.backends.torch.siglip import Siglip
from balanced_pi0.errors import InputError
from balanced_pi0.flow import Observation, euler_sample, make_attn_mask, noisy_actions, posemb_sincos
from balanced_pi0.model_config import Pi0Config


class Pi0(nn.Module):
    def __init__(self, config: Pi0Config):
        super().__init__()
        self.config = config
        llm, expert = config.llm, config.expert
        self.vision = Siglip(config.siglip, config.image_resolution, out_width=llm.width)
        self.llm = Gemma((llm, expert), config.vocab_size)
        self.state_proj = nn.Linear(config.action_dim, expert.width)
        self.action_in_proj = nn.Linear(config.action_dim, expert.width)
        self.action_time_mlp_in = nn.Linear(2 * expert.width, expert.width)
        self.action_time_mlp_out = nn.Linear(expert.width, expert.width)
        self.action_out_proj = nn.Linear(expert.width, config.action_dim)
        _init_like_openpi(self)

    # --- embeddings -------------------------------------------------------------------
    def embed_prefix(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image tokens of each camera (config order), then prompt tokens; all bidirectional."""
        cams = self.config.cameras
        missing = [c for c in cams if c not in obs.images or c not in obs.image_masks]
        if missing:
            raise InputError(f"observation lacks camera(s) {missing}; the model expects {list(cams)}")
        res = self.config.image_resolution
        for c in cams:
            if tuple(obs.images[c].shape[1:]) != (res, res, 3):
                raise InputError(
                    f"image {c!r} has shape {tuple(obs.images[c].shape)}, expected [B,{res},{res},3]"
                )
        batch = obs.state.shape[0]
        # All cameras through the tower in one batch: same result, one call.
        images = torch.cat([obs.images[c] for c in cams]).permute(0, 3, 1, 2)
        image_tokens = self.vision(images).split(batch)
        text = self.llm.embed(obs.tokenized_prompt.long())
        tokens = torch.cat([*image_tokens, text.to(image_tokens[0].dtype)], dim=1)
        n_img = image_tokens[0].shape[1]
        masks = [obs.image_masks[c].bool()[:, None].expand(batch, n_img) for c in cams]
        input_mask = torch.cat([*masks, obs.tokenized_prompt_mask.bool()], dim=1)
        ar_mask = torch.zeros(tokens.shape[1], dtype=torch.bool, device=tokens.device)
        return tokens, input_mask, ar_mask

    def embed_suffix(
        self, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """State token, then action tokens = MLP([action_in_proj(x_t), time embedding])."""
        state_token = self.state_proj(state)[:, None, :]
        action_tokens = self.action_in_proj(x_t)
        time_emb = posemb_sincos(t, self.action_in_proj.out_features)
        time_tokens = time_emb[:, None, :].expand(-1, x_t.shape[1], -1).to(action_tokens.dtype)
        h = F.silu(self.action_time_mlp_in(torch.cat([action_tokens, time_tokens], dim=-1)))
        tokens = torch.cat([state_token, self.action_time_mlp_out(h).to(state_token.dtype)], dim=1)
        input_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        # The state token starts a block (prefix can't see it); the actions start another.
        ar_mask = torch.zeros(tokens.shape[1], dtype=torch.bool, device=tokens.device)
        ar_mask[:2] = True
        return tokens, input_mask, ar_mask

    # --- flow matching ------------------------------------------------------------------
    def velocity(self, obs: Observation, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x_t, t) [B, H, D] from one joint pass over prefix and suffix."""
        with self._autocast(x_t):
            prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
            suffix, suffix_mask, suffix_ar = self.embed_suffix(obs.state, x_t, t)
            input_mask = torch.cat([prefix_mask, suffix_mask], dim=1)
            attn_mask = make_attn_mask(input_mask, torch.cat([prefix_ar, suffix_ar]))
            positions = torch.cumsum(input_mask.long(), dim=1) - 1
            (_, suffix_out), _ = self.llm([prefix, suffix], positions, attn_mask)
            v_t = self.action_out_proj(suffix_out[:, -self.config.action_horizon :])
        return v_t.float()

    def compute_loss(
        self, obs: Observation, actions: torch.Tensor, noise: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """Per-element squared error [B, H, D] of the velocity against ``u = ε − a``."""
        x_t, u_t = noisy_actions(actions, noise, time)
        return (self.velocity(obs, x_t, time) - u_t).square()

    @torch.no_grad()
    def sample_actions(self, obs: Observation, noise: torch.Tensor, num_steps: int = 10) -> torch.Tensor:
        """Euler integration of the flow from t = 1 (``noise``) to t = 0; the prefix runs once."""
        with self._autocast(noise):
            prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
            positions = torch.cumsum(prefix_mask.long(), dim=1) - 1
            _, kv_cache = self.llm([prefix, None], positions, make_attn_mask(prefix_mask, prefix_ar))
        return euler_sample(
            lambda x_t, t: self._cached_velocity(obs, prefix_mask, kv_cache, x_t, t), noise.float(), num_steps
        )

    def _cached_velocity(
        self, obs: Observation, prefix_mask: torch.Tensor, kv_cache: KVCache, x_t: torch.Tensor, t: np.float32
    ) -> torch.Tensor:
        with self._autocast(x_t):
            batch = x_t.shape[0]
            t_b = torch.full((batch,), float(t), dtype=torch.float32, device=x_t.device)
            suffix, suffix_mask, suffix_ar = self.embed_suffix(obs.state, x_t, t_b)
            # Suffix queries see every valid prefix token and the suffix blocks before them.
            to_prefix = prefix_mask[:, None, :].expand(-1, suffix.shape[1], -1)
            mask = torch.cat([to_prefix, make_attn_mask(suffix_mask, suffix_ar)], dim=-1)
            positions = prefix_mask.long().sum(-1, keepdim=True) + torch.cumsum(suffix_mask.long(), dim=1) - 1
            (_, suffix_out), _ = self.llm([None, suffix], positions, mask, kv_cache=kv_cache)
            return self.action_out_proj(suffix_out[:, -self.config.action_horizon :]).float()

    def _autocast(self, like: torch.Tensor) -> AbstractContextManager:
        return torch.autocast(like.device.type, dtype=torch.bfloat16, enabled=self.config.dtype == "bfloat16")


#: std of a unit normal truncated to [-2, 2] (flax ``variance_scaling``, ``truncated_normal``).
_TRUNC_NORMAL_STD = 0.87962566103423978


@torch.no_grad()
def _init_like_openpi(model: Pi0) -> None:
    """openpi's initialisers: lecun-normal kernels, xavier in SigLIP, zero norms, zero SigLIP head."""

    def lecun(w: torch.Tensor, fan_in: int) -> None:
        # flax's truncated normal is cut at two standard deviations and rescaled so that the
        # *truncated* draw has variance 1 / fan_in (the constant is the std of a unit normal cut
        # at ±2); torch's trunc_normal_ does not rescale, which left every kernel 12 % small.
        std = fan_in**-0.5 / _TRUNC_NORMAL_STD
        nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)

    for module in model.llm.modules():
        if isinstance(module, nn.Linear):
            lecun(module.weight, module.in_features)
    nn.init.normal_(model.llm.embed_tokens.weight, std=0.01)  # flax initializers.normal() (openpi Embedder)
    vision = model.vision
    lecun(vision.patch_embed.weight, vision.patch_embed.weight[0].numel())
    nn.init.zeros_(vision.patch_embed.bias)
    nn.init.normal_(vision.pos_embed, std=vision.pos_embed.shape[-1] ** -0.5)
    for layer in vision.layers:
        for lin in (layer.attn.q_proj, layer.attn.k_proj, layer.attn.v_proj, layer.attn.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (layer.mlp.fc1, layer.mlp.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=1e-6)
    nn.init.zeros_(vision.head.weight)
    nn.init.zeros_(vision.head.bias)
    for lin in (
        model.state_proj,
        model.action_in_proj,
        model.action_time_mlp_in,
        model.action_time_mlp_out,
        model.action_out_proj,
    ):
        lecun(lin.weight, lin.in_features)
        nn.init.zeros_(lin.bias)
