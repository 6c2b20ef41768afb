"""The JAX pi0 at the tiny size: shapes, flow-matching algebra, masking, KV-cached sampling, dtypes.

The oracle tests pin the numbers to openpi; these pin the semantics that must
hold at any size: cached sampling equals re-running the whole sequence, absent
cameras and prompt padding are invisible, and the prefix never sees the suffix.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from balanced_pi0.backends.jax.params import export_params, load_params, param_shapes
from balanced_pi0.backends.jax.pi0 import Pi0
from balanced_pi0.errors import InputError
from balanced_pi0.flow import Observation
from balanced_pi0.model_config import SIZES

CFG = SIZES["tiny"]
B = 2


def rel_err(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref))


def make_obs(seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    res, cams = CFG.image_resolution, CFG.cameras
    lengths = [CFG.max_token_len // 3, CFG.max_token_len // 2]
    prompt_mask = np.arange(CFG.max_token_len)[None, :] < np.array(lengths)[:, None]
    return Observation(
        images={c: rng.uniform(-1, 1, (B, res, res, 3)).astype(np.float32) for c in cams},
        image_masks={c: np.array([True, i != 1]) for i, c in enumerate(cams)},  # camera 1 absent in sample 1
        state=rng.normal(size=(B, CFG.action_dim)).astype(np.float32),
        tokenized_prompt=np.where(prompt_mask, rng.integers(3, CFG.vocab_size, prompt_mask.shape), 0).astype(
            np.int32
        ),
        tokenized_prompt_mask=prompt_mask,
    )


@pytest.fixture(scope="module")
def model() -> Pi0:
    """Random init with every constant leaf (zero biases, unit norms, the zero SigLIP head)
    given random values, so that no path through the network is trivially dead."""
    model = Pi0(CFG, nnx.Rngs(0))
    params = export_params(model)
    rng = np.random.default_rng(0)
    for path, value in params.items():
        if np.all(value == value.flat[0]):
            params[path] = (0.1 * rng.normal(size=value.shape)).astype(np.float32)
    load_params(model, params)
    return model


@pytest.fixture(scope="module")
def noisy():
    rng = np.random.default_rng(1)
    x_t = rng.normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32)
    return x_t, np.array([0.3, 0.9], np.float32)


velocity = nnx.jit(lambda m, o, x, t: m.velocity(o, x, t))


def test_velocity_shape_dtype_and_determinism(model, noisy):
    v1 = velocity(model, make_obs(), *noisy)
    v2 = velocity(model, make_obs(), *noisy)
    assert v1.shape == (B, CFG.action_horizon, CFG.action_dim) and v1.dtype == jnp.float32
    assert np.isfinite(np.asarray(v1)).all()
    np.testing.assert_array_equal(v1, v2)


def test_same_seed_same_params():
    ours = export_params(Pi0(CFG, nnx.Rngs(0)))
    again = export_params(Pi0(CFG, nnx.Rngs(0)))
    other = export_params(Pi0(CFG, nnx.Rngs(1)))
    assert all(np.array_equal(ours[k], again[k]) for k in ours)
    assert param_shapes(CFG) == {k: v.shape for k, v in ours.items()}  # the abstract tree is the real one
    assert not np.array_equal(ours["action_in_proj/kernel"], other["action_in_proj/kernel"])


def test_compute_loss_is_squared_velocity_error(model):
    rng = np.random.default_rng(2)
    actions, noise = (
        rng.normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32) for _ in "an"
    )
    time = np.array([0.25, 0.75], np.float32)
    sq_err = nnx.jit(lambda m, o, a, n, t: m.compute_loss(o, a, n, t))(
        model, make_obs(), actions, noise, time
    )
    x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
    expected = (np.asarray(velocity(model, make_obs(), x_t, time)) - (noise - actions)) ** 2
    assert sq_err.shape == actions.shape
    assert rel_err(sq_err, expected) < 1e-5


def test_absent_camera_and_prompt_padding_are_invisible(model, noisy):
    obs = make_obs()
    ref = velocity(model, obs, *noisy)
    cam = CFG.cameras[1]  # absent in sample 1
    images = dict(obs.images)
    images[cam] = images[cam].copy()
    images[cam][1] = 0.5
    tokens = np.where(obs.tokenized_prompt_mask, obs.tokenized_prompt, 7).astype(np.int32)
    changed = velocity(model, dataclasses.replace(obs, images=images, tokenized_prompt=tokens), *noisy)
    np.testing.assert_allclose(changed, ref, atol=1e-6)
    # ... while the same change where the camera is present does change sample 0.
    images[cam][0] = 0.5
    seen = velocity(model, dataclasses.replace(obs, images=images), *noisy)
    assert not np.allclose(seen[0], ref[0], atol=1e-4)


def test_cached_sampling_equals_euler_on_the_full_sequence(model):
    obs = make_obs()
    noise = np.random.default_rng(3).normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32)
    num_steps = 3
    actions = nnx.jit(lambda m, o, n: m.sample_actions(o, n, num_steps))(model, obs, noise)
    x, t, dt = noise, np.float32(1.0), np.float32(-1.0 / num_steps)
    for _ in range(num_steps):
        x = x + dt * np.asarray(velocity(model, obs, x, np.full(B, t, np.float32)))
        t = t + dt
    assert rel_err(actions, x) < 1e-5


def test_bfloat16_computes_in_bf16_with_float32_params(model, noisy):
    bf16 = nnx.eval_shape(lambda: Pi0(dataclasses.replace(CFG, dtype="bfloat16"), nnx.Rngs(0)))
    load_params(bf16, export_params(model))
    assert {v.dtype for v in export_params(bf16).values()} == {np.dtype(np.float32)}
    got = velocity(bf16, make_obs(), *noisy)
    ref = velocity(model, make_obs(), *noisy)
    assert got.dtype == jnp.float32  # action_out_proj promotes back to its float32 params
    assert 0 < rel_err(got, ref) < 0.05


def test_missing_camera_is_an_input_error(model, noisy):
    obs = make_obs()
    images = {c: v for c, v in obs.images.items() if c != CFG.cameras[2]}
    with pytest.raises(InputError, match=CFG.cameras[2]):
        model.velocity(dataclasses.replace(obs, images=images), *noisy)


@pytest.mark.slow
def test_remat_changes_memory_not_gradients(model):
    remat = nnx.eval_shape(lambda: Pi0(dataclasses.replace(CFG, remat=True), nnx.Rngs(0)))
    load_params(remat, export_params(model))
    rng = np.random.default_rng(4)
    actions, noise = (
        rng.normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32) for _ in "an"
    )
    time = np.array([0.4, 0.6], np.float32)

    @nnx.jit
    def grads(m):
        return nnx.grad(lambda m: jnp.mean(m.compute_loss(make_obs(), actions, noise, time)))(m)

    plain, rematted = nnx.to_flat_state(grads(model)), nnx.to_flat_state(grads(remat))
    for (path, g), (_, h) in zip(plain, rematted, strict=True):
        np.testing.assert_allclose(h[...], g[...], rtol=1e-5, atol=1e-6, err_msg="/".join(map(str, path)))
