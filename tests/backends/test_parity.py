"""The two backends are one model: JAX params converted to torch give the same numbers, and back exactly.

Random params are loaded into the JAX model, exported from it, converted with
``backends.torch.convert``, and both models see the same inputs in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from balanced_pi0.backends.jax import params as jax_params
from balanced_pi0.backends.jax import pi0 as jax_pi0
from balanced_pi0.backends.torch import pi0 as torch_pi0
from balanced_pi0.backends.torch.convert import export_params, load_params
from balanced_pi0.flow import Observation, noisy_actions
from balanced_pi0.model_config import SIZES

CONFIG = SIZES["tiny"]
TOL = 1e-5
BATCH = 2


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _inputs(seed: int = 0) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
    """One batch as numpy: a camera masked out for sample 1, prompts of different lengths."""
    rng = np.random.default_rng(seed)
    c, res, L = CONFIG, CONFIG.image_resolution, CONFIG.max_token_len
    shape = (BATCH, c.action_horizon, c.action_dim)
    return {
        "images": {cam: rng.uniform(-1, 1, (BATCH, res, res, 3)).astype(np.float32) for cam in c.cameras},
        "image_masks": {cam: np.array([True, cam != c.cameras[1]]) for cam in c.cameras},
        "state": rng.standard_normal((BATCH, c.action_dim)).astype(np.float32),
        "tokenized_prompt": rng.integers(0, c.vocab_size, (BATCH, L)).astype(np.int32),
        "tokenized_prompt_mask": np.arange(L)[None, :] < np.array([[L - 3], [7]]),
        "actions": rng.standard_normal(shape).astype(np.float32),
        "noise": rng.standard_normal(shape).astype(np.float32),
        "time": np.array([0.83, 0.21], np.float32),
        "sample_noise": rng.standard_normal(shape).astype(np.float32),
    }


def _obs(x: dict, to_array) -> Observation:
    keys = ("images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask")
    convert = lambda v: {k: to_array(a) for k, a in v.items()} if isinstance(v, dict) else to_array(v)  # noqa: E731
    return Observation(**{k: convert(x[k]) for k in keys})


@pytest.fixture(scope="module")
def models():
    """(JAX model with random params, those params, the torch model converted from them)."""
    # The JAX model's own tree, built abstractly and filled by its strict loader: random
    # everywhere (no zero-initialised norm or SigLIP head hiding a path), and no eager
    # initialisation, which costs tens of seconds on the CPU.
    jmodel = nnx.eval_shape(lambda: jax_pi0.Pi0(CONFIG, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    shapes = jax_params.param_shapes(CONFIG)
    flat = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in sorted(shapes.items())}
    jax_params.load_params(jmodel, flat)
    tmodel = torch_pi0.Pi0(CONFIG).eval()
    load_params(tmodel, jax_params.export_params(jmodel))
    return jmodel, flat, tmodel


def test_velocity_and_loss_agree(models):
    jmodel, _, tmodel = models
    x = _inputs()
    jobs, tobs = _obs(x, jnp.asarray), _obs(x, torch.from_numpy)
    x_t, _ = noisy_actions(x["actions"], x["noise"], x["time"])
    # jit: one compiled call is faster on the CPU than dispatching the model op by op
    v_jax = jax.jit(jmodel.velocity)(jobs, jnp.asarray(x_t), jnp.asarray(x["time"]))
    with torch.no_grad():
        v_torch = tmodel.velocity(tobs, torch.from_numpy(x_t), torch.from_numpy(x["time"]))
        l_torch = tmodel.compute_loss(tobs, *(torch.from_numpy(x[k]) for k in ("actions", "noise", "time")))
    l_jax = jax.jit(jmodel.compute_loss)(jobs, *(jnp.asarray(x[k]) for k in ("actions", "noise", "time")))
    assert rel_err(v_torch, v_jax) <= TOL
    assert l_torch.shape == l_jax.shape
    assert rel_err(l_torch, l_jax) <= TOL


def test_sampled_actions_agree(models):
    jmodel, _, tmodel = models
    x = _inputs()
    jobs, tobs = _obs(x, jnp.asarray), _obs(x, torch.from_numpy)
    a_jax = jax.jit(lambda o, n: jmodel.sample_actions(o, n, num_steps=5))(
        jobs, jnp.asarray(x["sample_noise"])
    )
    a_torch = tmodel.sample_actions(tobs, torch.from_numpy(x["sample_noise"]), num_steps=5)
    assert rel_err(a_torch, a_jax) <= TOL


def test_torch_to_jax_gives_bit_identical_params(models):
    _, flat, tmodel = models
    fresh = nnx.eval_shape(lambda: jax_pi0.Pi0(CONFIG, rngs=nnx.Rngs(7)))
    jax_params.load_params(fresh, export_params(tmodel))
    back = jax_params.export_params(fresh)
    assert back.keys() == flat.keys()
    for k, v in flat.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_fresh_initialisations_have_the_same_scale():
    """A torch model starts where a JAX (openpi) model starts: the same tensors are zero, and every
    other large tensor has the same spread. Caught a 100x token embedding and kernels 12 % small."""
    jflat = jax_params.export_params(jax_pi0.Pi0(CONFIG, rngs=nnx.Rngs(0)))
    torch.manual_seed(0)
    tflat = export_params(torch_pi0.Pi0(CONFIG))
    assert tflat.keys() == jflat.keys()
    for k in sorted(jflat):
        j, t = np.asarray(jflat[k], np.float64), np.asarray(tflat[k], np.float64)
        assert (j.std() == 0) == (t.std() == 0) and (j.any() == t.any()), k
        if j.size >= 2000 and j.std() > 0:  # std estimated to ~2 % from this many draws
            assert 0.93 < t.std() / j.std() < 1.07, (k, t.std(), j.std())
