"""The PyTorch pi0 against openpi's own numbers (oracle fixtures) and against its own definitions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from balanced_pi0.backends.torch.convert import load_params, torch_to_jax
from balanced_pi0.backends.torch.pi0 import Pi0
from balanced_pi0.errors import InputError
from balanced_pi0.flow import Observation, make_attn_mask, sample_noise_time
from balanced_pi0.model_config import SIZES, Pi0Config

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "openpi_pi0_oracle"
FIXTURES = sorted(FIXTURE_DIR.glob("*.npz"))
TOL = 1e-5  # the fixture's bound: openpi's own jit and eager runs differ by ~6e-6


def rel_err(got, ref) -> float:
    """‖got − ref‖ / ‖ref‖, the fixture's comparison."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


# --- oracle: openpi's JAX pi0 -----------------------------------------------------------------
def _cameras(fx) -> tuple[str, ...]:
    return tuple(k.removeprefix("obs/image/") for k in fx.files if k.startswith("obs/image/"))


def _fixture_config(fx) -> Pi0Config:
    meta = json.loads(str(fx["meta_json"]))
    c, cams = meta["config"], _cameras(fx)
    return Pi0Config(
        paligemma_variant=c["paligemma_variant"],
        action_expert_variant=c["action_expert_variant"],
        siglip_variant=meta["siglip_variant"],
        action_dim=c["action_dim"],
        action_horizon=c["action_horizon"],
        max_token_len=c["max_token_len"],
        image_resolution=fx[f"obs/image/{cams[0]}"].shape[1],
        vocab_size=fx["param/PaliGemma/llm/embedder/input_embedding"].shape[0],
        cameras=cams,
    )


def _fixture_observation(fx) -> Observation:
    cams, t = _cameras(fx), lambda key: torch.from_numpy(fx[key])
    return Observation(
        images={c: t(f"obs/image/{c}") for c in cams},
        image_masks={c: t(f"obs/image_mask/{c}") for c in cams},
        state=t("obs/state"),
        tokenized_prompt=t("obs/tokenized_prompt"),
        tokenized_prompt_mask=t("obs/tokenized_prompt_mask"),
    )


@pytest.fixture(scope="module", params=FIXTURES, ids=[f.stem for f in FIXTURES])
def oracle(request):
    """(fixture arrays, torch model loaded from the fixture's openpi params, observation)."""
    fx = np.load(request.param)
    model = Pi0(_fixture_config(fx))
    load_params(model, {k.removeprefix("param/"): fx[k] for k in fx.files if k.startswith("param/")})
    return fx, model.eval(), _fixture_observation(fx)


def test_oracle_fixture_present():
    assert FIXTURES, f"no openpi oracle fixture (*.npz) under {FIXTURE_DIR}"


@torch.no_grad()
def test_oracle_velocity_and_loss(oracle):
    fx, model, obs = oracle
    t = lambda key: torch.from_numpy(fx[key])  # noqa: E731
    assert rel_err(model.velocity(obs, t("x_t"), t("time")), fx["v_t"]) <= TOL
    sq_err = model.compute_loss(obs, t("actions"), t("noise"), t("time"))
    assert sq_err.shape == fx["actions"].shape
    assert rel_err(sq_err.mean(-1), fx["loss"]) <= TOL


@torch.no_grad()
def test_oracle_intermediates(oracle):
    fx, model, obs = oracle
    tokens, input_mask, ar_mask = model.embed_prefix(obs)
    assert rel_err(tokens, fx["inter/prefix_tokens"]) <= TOL
    np.testing.assert_array_equal(input_mask.numpy(), fx["inter/prefix_mask"])
    np.testing.assert_array_equal(ar_mask.numpy(), fx["inter/prefix_ar_mask"])
    suffix, suffix_mask, suffix_ar = model.embed_suffix(
        obs.state, torch.from_numpy(fx["x_t"]), torch.from_numpy(fx["time"])
    )
    assert rel_err(suffix, fx["inter/suffix_tokens"]) <= TOL
    np.testing.assert_array_equal(suffix_mask.numpy(), fx["inter/suffix_mask"])
    np.testing.assert_array_equal(suffix_ar.numpy(), fx["inter/suffix_ar_mask"])
    # The prefix KV cache the sampler reuses: keys after RoPE, values, per layer.
    positions = torch.cumsum(input_mask.long(), dim=1) - 1
    _, cache = model.llm([tokens, None], positions, make_attn_mask(input_mask, ar_mask))
    assert rel_err(torch.stack([k for k, _ in cache]), fx["sample/kv_cache_k"]) <= TOL
    assert rel_err(torch.stack([v for _, v in cache]), fx["sample/kv_cache_v"]) <= TOL


@torch.no_grad()
def test_oracle_sample_actions(oracle):
    fx, model, obs = oracle
    actions = model.sample_actions(obs, torch.from_numpy(fx["sample/noise"]), int(fx["sample/num_steps"]))
    assert rel_err(actions, fx["sample/actions"]) <= TOL


def test_oracle_gradients(oracle):
    """d mean(loss)/d params, mapped back to openpi's names with the converter, per parameter."""
    fx, model, obs = oracle
    t = lambda key: torch.from_numpy(fx[key])  # noqa: E731
    model.zero_grad()
    model.compute_loss(obs, t("actions"), t("noise"), t("time")).mean().backward()
    # No gradient reaches the PaliGemma expert's last MLP and final norm (only the action
    # expert's output is read): torch leaves None where JAX has zeros.
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters()}
    grads = torch_to_jax(grads, model.config)
    model.zero_grad()
    ref = {path: fx[f"grad/{path}"] for path in grads}
    # Zero in exact arithmetic (e.g. SigLIP's key bias: softmax ignores a per-query shift):
    # float noise on both sides, so those must only be negligible, not equal.
    floor = 1e-6 * max(np.linalg.norm(r) for r in ref.values())
    zero = sorted(path for path, r in ref.items() if np.linalg.norm(r) <= floor)
    assert zero and all(np.linalg.norm(grads[path]) <= floor for path in zero), zero
    worst = {path: rel_err(grads[path], r) for path, r in ref.items() if path not in zero}
    assert max(worst.values()) <= TOL, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


# --- definitions, at the tiny size ------------------------------------------------------------
def _tiny_model(seed: int = 0, **overrides) -> Pi0:
    torch.manual_seed(seed)
    model = Pi0(replace(SIZES["tiny"], **overrides)).eval()
    with torch.no_grad():  # openpi zero-inits norms and the SigLIP head; randomise so every path matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _tiny_obs(config: Pi0Config, batch: int = 2, seed: int = 1) -> Observation:
    g = torch.Generator().manual_seed(seed)
    res, L = config.image_resolution, config.max_token_len
    lengths = torch.tensor([L // 2, 5])[:batch]
    return Observation(
        images={c: torch.rand((batch, res, res, 3), generator=g) * 2 - 1 for c in config.cameras},
        image_masks={c: torch.tensor([True, i != 1])[:batch] for i, c in enumerate(config.cameras)},
        state=torch.randn((batch, config.action_dim), generator=g),
        tokenized_prompt=torch.randint(0, config.vocab_size, (batch, L), generator=g),
        tokenized_prompt_mask=torch.arange(L)[None, :] < lengths[:, None],
    )


def test_make_attn_mask_blocks():
    """big_vision's examples: prefix-LM and block-causal attention, padding hidden both ways."""
    ar = torch.tensor([0, 0, 1, 0, 1], dtype=torch.bool)
    valid = torch.tensor([[True, True, True, True, True], [True, False, True, True, True]])
    mask = make_attn_mask(valid, ar)
    block = torch.tensor([0, 0, 1, 1, 2])  # token i sees j iff block[j] <= block[i]
    expected = block[None, :] <= block[:, None]
    assert torch.equal(mask[0], expected)
    assert torch.equal(mask[1], expected & valid[1][None, :] & valid[1][:, None])


@torch.no_grad()
def test_compute_loss_is_flow_matching_error():
    model = _tiny_model()
    c = model.config
    obs = _tiny_obs(c)
    actions = torch.randn((2, c.action_horizon, c.action_dim), generator=torch.Generator().manual_seed(3))
    noise, time = map(torch.as_tensor, sample_noise_time(3, 0, 2, c.action_horizon, c.action_dim))
    tt = time[:, None, None]
    v = model.velocity(obs, tt * noise + (1 - tt) * actions, time)
    torch.testing.assert_close(model.compute_loss(obs, actions, noise, time), (v - (noise - actions)) ** 2)


@torch.no_grad()
def test_sample_actions_with_cache_equals_euler_on_full_passes():
    """The KV-cached sampler integrates the same field the uncached ``velocity`` computes."""
    model = _tiny_model()
    c = model.config
    obs = _tiny_obs(c)
    noise = torch.randn((2, c.action_horizon, c.action_dim), generator=torch.Generator().manual_seed(4))
    x, t = noise, 1.0
    for _ in range(5):
        x, t = x - 0.2 * model.velocity(obs, x, torch.full((2,), t)), t - 0.2
    assert rel_err(model.sample_actions(obs, noise, num_steps=5), x) < 1e-5


@torch.no_grad()
def test_masked_inputs_do_not_matter():
    """A masked camera's pixels and the prompt's padding tokens cannot change the velocity."""
    model = _tiny_model()
    c = model.config
    obs = _tiny_obs(c)
    x_t, t = torch.randn((2, c.action_horizon, c.action_dim)), torch.tensor([0.3, 0.7])
    v = model.velocity(obs, x_t, t)
    masked_cam = c.cameras[1]  # masked for sample 1
    obs.images[masked_cam][1] = -obs.images[masked_cam][1]
    obs.tokenized_prompt[~obs.tokenized_prompt_mask] = 7
    torch.testing.assert_close(model.velocity(obs, x_t, t), v, rtol=1e-5, atol=1e-6)
    obs.images[c.cameras[0]][1] = -obs.images[c.cameras[0]][1]  # a visible camera does matter
    assert rel_err(model.velocity(obs, x_t, t)[1], v[1]) > 1e-4


def test_init_is_deterministic():
    a = [p.detach().clone() for p in (_tiny_model(seed=5).parameters())]
    b = list(_tiny_model(seed=5).parameters())
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_bf16_compute_keeps_float32_params():
    model = _tiny_model()
    bf16 = _tiny_model(dtype="bfloat16")
    obs = _tiny_obs(model.config)
    x_t, t = torch.randn((2, 10, 32)), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        v32, v16 = model.velocity(obs, x_t, t), bf16.velocity(obs, x_t, t)
    assert v16.dtype == torch.float32
    assert 1e-5 < rel_err(v16, v32) < 5e-2  # really computed in bf16, and still the same function
    bf16.compute_loss(obs, x_t, torch.randn_like(x_t), t).mean().backward()
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32
        for p in bf16.parameters()
        if p.grad is not None
    )


def test_missing_camera_is_an_input_error():
    model = _tiny_model()
    obs = _tiny_obs(model.config)
    del obs.images[model.config.cameras[2]]
    with pytest.raises(InputError, match=model.config.cameras[2]):
        model.velocity(obs, torch.zeros((2, 10, 32)), torch.ones(2))
