"""Flow matching, written once: noise and time, x_t and the target, masks, time embedding,
Euler sampling, the learning-rate schedule; each on NumPy, JAX and PyTorch where it takes arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats

from balanced_pi0 import config as _config
from balanced_pi0 import flow
from test_train import make_params

NAMESPACES = {"numpy": np.asarray, "jax": jnp.asarray, "torch": torch.as_tensor}


def test_learning_rate_is_optax_warmup_cosine():
    from balanced_pi0.backends.jax.train_step import make_schedule

    opt = _config.OptimizerConfig(peak_lr=1e-3, decay_lr=1e-5, warmup_steps=7, decay_steps=40)
    schedule = make_schedule(opt)
    ours = np.array([flow.learning_rate(s, opt) for s in range(50)])
    theirs = np.array([float(schedule(s)) for s in range(50)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)  # optax evaluates in float32
    assert (
        ours[0] == pytest.approx(1e-3 / 8)
        and ours[7] == pytest.approx(1e-3)
        and ours[-1] == pytest.approx(1e-5)
    )


def test_decay_must_outlast_warmup():
    with pytest.raises(_config.ConfigError, match="decay_steps"):
        make_params("jax", optimizer={"warmup_steps": 20, "decay_steps": 20})


def test_noise_and_time_depend_on_seed_and_step_only():
    a = flow.sample_noise_time(0, 5, 4, 3, 2)
    np.testing.assert_array_equal(a[0], flow.sample_noise_time(0, 5, 4, 3, 2)[0])
    assert not np.array_equal(a[0], flow.sample_noise_time(0, 6, 4, 3, 2)[0])
    assert not np.array_equal(a[0], flow.sample_noise_time(1, 5, 4, 3, 2)[0])
    t = flow.sample_noise_time(0, 0, 10_000, 1, 1)[1]
    assert t.min() >= flow.TIME_MIN and t.max() <= 1.0
    # t = 0.001 + 0.999·Beta(1.5, 1) and ε ~ N(0, I): Kolmogorov-Smirnov against scipy's
    noise, t = flow.sample_noise_time(0, 0, 20_000, 2, 3)
    assert stats.kstest(t, stats.beta(1.5, 1, loc=0.001, scale=0.999).cdf).pvalue > 1e-3
    assert stats.kstest(noise.ravel(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("to_array", NAMESPACES.values(), ids=NAMESPACES.keys())
def test_noisy_actions_is_openpi_interpolation(to_array):
    """t = 1 is pure noise, t = 0 the data; the target is the constant velocity ε − a."""
    rng = np.random.default_rng(0)
    actions, noise = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    time = np.array([1.0, 0.0, 0.25], np.float32)
    x_t, u_t = flow.noisy_actions(to_array(actions), to_array(noise), to_array(time))
    x_t, u_t = np.asarray(x_t), np.asarray(u_t)
    np.testing.assert_allclose(x_t[0], noise[0])
    np.testing.assert_allclose(x_t[1], actions[1])
    np.testing.assert_allclose(x_t[2], 0.25 * noise[2] + 0.75 * actions[2], rtol=1e-6)
    np.testing.assert_array_equal(u_t, noise - actions)


@pytest.mark.parametrize("to_array", NAMESPACES.values(), ids=NAMESPACES.keys())
def test_make_attn_mask_semantics(to_array):
    def mask(valid, ar):
        return np.asarray(flow.make_attn_mask(to_array(np.array(valid)), to_array(np.array(ar))))[0]

    np.testing.assert_array_equal(mask([[True] * 4], [True] * 4), np.tril(np.ones((4, 4), bool)))
    # prefix-LM: two bidirectional tokens, then a causal one, then one in its block
    blocks = mask([[True] * 4], [False, False, True, False])
    np.testing.assert_array_equal(blocks, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    padded = mask([[True, False, True, True]], [False, False, True, False])
    assert not padded[:, 1].any() and not padded[1].any()


def test_posemb_sincos_is_the_same_in_every_backend():
    """One definition; the libraries' float32 ``sin`` of angles up to ~1600 rad differ in the last bits."""
    t = np.random.default_rng(0).uniform(size=16).astype(np.float32)
    ref = np.asarray(flow.posemb_sincos(t, 32))
    assert ref.shape == (16, 32) and ref.dtype == np.float32
    np.testing.assert_allclose(ref[:, :16] ** 2 + ref[:, 16:] ** 2, 1.0, rtol=1e-6)
    got_jax = np.asarray(jax.jit(lambda x: flow.posemb_sincos(x, 32))(t))
    np.testing.assert_allclose(got_jax, ref, atol=2e-4)
    np.testing.assert_allclose(flow.posemb_sincos(torch.from_numpy(t), 32).numpy(), ref, atol=2e-4)


def test_euler_sample_integrates_from_noise_to_data():
    """A velocity field constant along the path (v = ε − a) lands exactly on the data, in the
    plain loop and under ``jax.lax.fori_loop``; the times seen run 1, 0.75, 0.5, 0.25."""
    a, eps = np.float32(0.5), np.float32(2.0)
    seen = []

    def velocity(x_t, t):
        seen.append(float(t))
        return np.full_like(x_t, eps - a)

    x0 = flow.euler_sample(velocity, np.full((2, 3), eps, np.float32), num_steps=4)
    np.testing.assert_allclose(x0, a, rtol=1e-6)
    assert seen == [1.0, 0.75, 0.5, 0.25]
    jitted = jax.jit(
        lambda noise: flow.euler_sample(lambda x, t: jnp.full_like(x, eps - a), noise, 4, jax.lax.fori_loop)
    )
    np.testing.assert_array_equal(np.asarray(jitted(jnp.full((2, 3), eps))), x0)
