"""pi0 (openpi's flow-matching VLA) in flax nnx.

The sequence is a *prefix* — every camera's SigLIP tokens, then the prompt's
token embeddings, all attending to each other — and a *suffix* run by the
action expert: one state token, then ``action_horizon`` action tokens that mix
the noisy action ``x_t`` with a sinusoidal embedding of the flow time ``t``.
Block-causal masking (``make_attn_mask``) keeps the prefix blind to the suffix
and the state token blind to the actions, so the prefix can be computed once
into a KV cache at sampling time.

Flow matching itself (``x_t``, the target, the masks, the time embedding, Euler
sampling) is ``balanced_pi0.flow``, shared with the PyTorch model.

Attribute names reproduce openpi's parameter tree, so ``nnx.state`` of this
model *is* an openpi checkpoint's ``params`` (see ``params.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from balanced_pi0.backends.jax.gemma import Gemma
from balanced_pi0.backends.jax.siglip import Siglip
from balanced_pi0.errors import InputError
from balanced_pi0.flow import Observation, euler_sample, make_attn_mask, noisy_actions, posemb_sincos
from balanced_pi0.model_config import Pi0Config

# The observation crosses ``jax.jit`` boundaries: a pytree of its arrays.
jax.tree_util.register_dataclass(
    Observation, data_fields=[f.name for f in dataclasses.fields(Observation)], meta_fields=[]
)


class PaliGemma(nnx.Module):
    def __init__(self, config: Pi0Config, rngs: nnx.Rngs):
        width = config.llm.width
        experts = [config.llm, config.expert]
        self.llm = Gemma(experts, config.vocab_size, config.dtype, rngs, remat=config.remat)
        self.img = Siglip(
            config.siglip, config.image_resolution, width, config.dtype, rngs, remat=config.remat
        )


class Pi0(nnx.Module):
    def __init__(self, config: Pi0Config, rngs: nnx.Rngs):
        self.config = config
        width = config.expert.width
        self.PaliGemma = PaliGemma(config, rngs)
        self.state_proj = nnx.Linear(config.action_dim, width, rngs=rngs)
        self.action_in_proj = nnx.Linear(config.action_dim, width, rngs=rngs)
        self.action_time_mlp_in = nnx.Linear(2 * width, width, rngs=rngs)
        self.action_time_mlp_out = nnx.Linear(width, width, rngs=rngs)
        self.action_out_proj = nnx.Linear(width, config.action_dim, rngs=rngs)

    # -- token embedding -------------------------------------------------------------------------

    def embed_prefix(self, obs: Observation) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Image tokens of every camera (config order), then the prompt: tokens, input mask, ar mask."""
        missing = [c for c in self.config.cameras if c not in obs.images or c not in obs.image_masks]
        if missing:
            raise InputError(
                f"observation lacks camera(s) {missing}; the model expects {self.config.cameras}"
            )
        tokens, input_mask = [], []
        for cam in self.config.cameras:
            image_tokens = self.PaliGemma.img(obs.images[cam])
            tokens.append(image_tokens)
            mask = obs.image_masks[cam]
            input_mask.append(jnp.broadcast_to(mask[:, None], image_tokens.shape[:2]))
        tokens.append(self.PaliGemma.llm.embed(obs.tokenized_prompt))
        input_mask.append(obs.tokenized_prompt_mask)
        tokens = jnp.concatenate(tokens, axis=1)
        ar_mask = jnp.zeros(tokens.shape[1], jnp.bool_)  # images and text see each other
        return tokens, jnp.concatenate(input_mask, axis=1), ar_mask

    def embed_time(self, t: jax.Array) -> jax.Array:
        return posemb_sincos(t, self.action_in_proj.out_features)

    def embed_suffix(self, obs: Observation, x_t: jax.Array, t: jax.Array):
        """The state token, then one token per action step mixing ``x_t`` and the time embedding."""
        state_token = self.state_proj(obs.state)[:, None, :]
        action_tokens = self.action_in_proj(x_t)
        time_tokens = jnp.broadcast_to(self.embed_time(t)[:, None, :], action_tokens.shape)
        mixed = self.action_time_mlp_in(jnp.concatenate([action_tokens, time_tokens], axis=-1))
        mixed = self.action_time_mlp_out(nnx.swish(mixed))
        tokens = jnp.concatenate([state_token, mixed], axis=1)
        input_mask = jnp.ones(tokens.shape[:2], jnp.bool_)
        # The prefix cannot see the state; prefix and state cannot see the actions.
        horizon = x_t.shape[1]
        ar_mask = jnp.array([True, True] + [False] * (horizon - 1))
        return tokens, input_mask, ar_mask

    # -- flow matching ---------------------------------------------------------------------------

    def velocity(self, obs: Observation, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """``v_t [B, H, action_dim]`` at noisy actions ``x_t`` and flow times ``t [B]`` (one pass)."""
        prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
        suffix, suffix_mask, suffix_ar = self.embed_suffix(obs, x_t, t)
        input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
        attn_mask = make_attn_mask(input_mask, jnp.concatenate([prefix_ar, suffix_ar]))
        positions = jnp.cumsum(input_mask, axis=1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm([prefix, suffix], positions, attn_mask)
        return self.action_out_proj(suffix_out[:, -x_t.shape[1] :])

    def compute_loss(
        self, obs: Observation, actions: jax.Array, noise: jax.Array, time: jax.Array
    ) -> jax.Array:
        """Per-element squared error ``(v − u)² [B, H, D]``; reduce it with ``balanced_pi0.loss``."""
        x_t, u_t = noisy_actions(actions, noise, time)
        return jnp.square(self.velocity(obs, x_t, time) - u_t)

    def sample_actions(self, obs: Observation, noise: jax.Array, num_steps: int = 10) -> jax.Array:
        """Integrate ``dx/dt = v`` from t = 1 (``noise``) to 0 with ``num_steps`` Euler steps.

        The prefix runs once; every step only runs the suffix against its cached keys/values.
        """
        kv_cache, prefix_mask = self.prefix_cache(obs)

        def velocity(x_t, t):
            return self.cached_velocity(obs, kv_cache, prefix_mask, x_t, jnp.broadcast_to(t, x_t.shape[:1]))

        return euler_sample(velocity, noise, num_steps, jax.lax.fori_loop)

    def prefix_cache(self, obs: Observation):
        """Run the prefix alone: per-layer keys/values ``[L, B, P, K, H]`` and the prefix input mask."""
        prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
        positions = jnp.cumsum(prefix_mask, axis=1) - 1
        _, kv_cache = self.PaliGemma.llm([prefix, None], positions, make_attn_mask(prefix_mask, prefix_ar))
        return kv_cache, prefix_mask

    def cached_velocity(self, obs, kv_cache, prefix_mask, x_t, t):
        suffix, suffix_mask, suffix_ar = self.embed_suffix(obs, x_t, t)
        suffix_len = suffix.shape[1]
        # Suffix queries see every real prefix token, and each other block-causally.
        to_prefix = jnp.broadcast_to(prefix_mask[:, None, :], (*suffix_mask.shape, prefix_mask.shape[1]))
        mask = jnp.concatenate([to_prefix, make_attn_mask(suffix_mask, suffix_ar)], axis=-1)
        positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm([None, suffix], positions, mask, kv_cache=kv_cache)
        return self.action_out_proj(suffix_out[:, suffix_len - x_t.shape[1] :])
