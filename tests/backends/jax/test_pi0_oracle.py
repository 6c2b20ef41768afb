"""The JAX pi0 against openpi's own numbers (the oracle fixture, produced by openpi's pi0 code).

Params load by name from the fixture's ``param/*``; velocity, loss, sampled
actions, the prefix KV cache, intermediates and per-parameter gradients must
match to ‖got − ref‖ / ‖ref‖ ≤ 1e-5 (openpi's own jit-vs-eager spread is ~6e-6).
The full-size parameter tree must equal openpi's name for name, shape for shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from balanced_pi0.backends.jax.params import load_params, param_shapes
from balanced_pi0.backends.jax.pi0 import Pi0
from balanced_pi0.flow import Observation, make_attn_mask
from balanced_pi0.model_config import SIZES, Pi0Config

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "openpi_pi0_oracle"
FIXTURES = sorted(FIXTURE_DIR.glob("fixture_*.npz"))
RTOL = 1e-5


def test_oracle_fixture_present():
    """The fixture is part of the repository: without it these tests fail, they never skip."""
    assert FIXTURES, f"no openpi oracle fixture (fixture_*.npz) under {FIXTURE_DIR}"
    assert (FIXTURE_DIR / "pi0_full_param_shapes.json").is_file()


def rel_err(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    diff = np.linalg.norm(np.asarray(got, np.float64) - ref)
    return float(diff / np.linalg.norm(ref)) if np.linalg.norm(ref) > 0 else float(diff)


def fixture_config(fx, meta: dict) -> Pi0Config:
    c = meta["config"]
    assert not c.get("pi05", False), "pi0.5 fixtures are not supported"
    image = fx[f"obs/image/{SIZES['dummy'].cameras[0]}"]
    return Pi0Config(
        paligemma_variant=c["paligemma_variant"],
        action_expert_variant=c["action_expert_variant"],
        siglip_variant=meta["siglip_variant"],
        action_dim=c["action_dim"],
        action_horizon=c["action_horizon"],
        max_token_len=c["max_token_len"],
        image_resolution=image.shape[1],
    )


class Oracle:
    def __init__(self, path: Path):
        self.fx = dict(np.load(path))
        self.meta = json.loads(str(self.fx["meta_json"]))
        self.config = fixture_config(self.fx, self.meta)
        self.params = {k.removeprefix("param/"): v for k, v in self.fx.items() if k.startswith("param/")}
        self.model = nnx.eval_shape(lambda: Pi0(self.config, nnx.Rngs(0)))
        load_params(self.model, self.params)
        cams = self.config.cameras
        self.obs = Observation(
            images={c: jnp.asarray(self.fx[f"obs/image/{c}"]) for c in cams},
            image_masks={c: jnp.asarray(self.fx[f"obs/image_mask/{c}"]) for c in cams},
            state=jnp.asarray(self.fx["obs/state"]),
            tokenized_prompt=jnp.asarray(self.fx["obs/tokenized_prompt"]),
            tokenized_prompt_mask=jnp.asarray(self.fx["obs/tokenized_prompt_mask"]),
        )

    def __getitem__(self, key: str) -> np.ndarray:
        return self.fx[key]


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.stem)
def oracle(request) -> Oracle:
    return Oracle(request.param)


@nnx.jit
def _loss_and_grads(model, obs, actions, noise, time):
    def loss_mean(m):
        return jnp.mean(m.compute_loss(obs, actions, noise, time))

    return nnx.value_and_grad(loss_mean)(model)


def test_oracle_velocity_and_loss(oracle):
    v_t = nnx.jit(lambda m, o, x, t: m.velocity(o, x, t))(
        oracle.model, oracle.obs, oracle["x_t"], oracle["time"]
    )
    assert rel_err(v_t, oracle["v_t"]) <= RTOL
    sq_err = nnx.jit(lambda m, o, a, n, t: m.compute_loss(o, a, n, t))(
        oracle.model, oracle.obs, oracle["actions"], oracle["noise"], oracle["time"]
    )
    assert sq_err.shape == oracle["actions"].shape
    assert rel_err(jnp.mean(sq_err, -1), oracle["loss"]) <= RTOL
    # openpi's compute_loss drew this same noise and time from its key: the same loss.
    assert rel_err(jnp.mean(sq_err, -1), oracle["loss_openpi_compute_loss"]) <= RTOL


def test_oracle_intermediates(oracle):
    m, obs, cfg = oracle.model, oracle.obs, oracle.config
    prefix, prefix_mask, prefix_ar = nnx.jit(lambda m, o: m.embed_prefix(o))(m, obs)
    n = cfg.tokens_per_image
    for i, cam in enumerate(cfg.cameras):  # the prefix is each camera's SigLIP tokens, then the text
        assert rel_err(prefix[:, i * n : (i + 1) * n], oracle[f"inter/image_tokens/{cam}"]) <= RTOL, cam
    assert rel_err(prefix[:, len(cfg.cameras) * n :], oracle["inter/text_embeddings"]) <= RTOL
    assert rel_err(m.embed_time(jnp.asarray(oracle["time"])), oracle["inter/time_emb"]) <= RTOL

    suffix, suffix_mask, suffix_ar = m.embed_suffix(
        obs, jnp.asarray(oracle["x_t"]), jnp.asarray(oracle["time"])
    )
    assert rel_err(prefix, oracle["inter/prefix_tokens"]) <= RTOL
    assert rel_err(suffix, oracle["inter/suffix_tokens"]) <= RTOL
    for got, key in [
        (prefix_mask, "prefix_mask"),
        (prefix_ar, "prefix_ar_mask"),
        (suffix_mask, "suffix_mask"),
        (suffix_ar, "suffix_ar_mask"),
    ]:
        np.testing.assert_array_equal(got, oracle[f"inter/{key}"], err_msg=key)

    input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
    positions = jnp.cumsum(input_mask, axis=1) - 1
    np.testing.assert_array_equal(positions, oracle["inter/positions"])
    attn_mask = make_attn_mask(input_mask, jnp.concatenate([prefix_ar, suffix_ar]))
    (prefix_out, suffix_out), _ = nnx.jit(lambda m, xs, p, a: m.PaliGemma.llm(xs, p, a))(
        m, [prefix, suffix], positions, attn_mask
    )
    assert rel_err(prefix_out, oracle["inter/prefix_out"]) <= RTOL
    assert rel_err(suffix_out, oracle["inter/suffix_out"]) <= RTOL


def test_oracle_sample_actions_and_kv_cache(oracle):
    num_steps = int(oracle["sample/num_steps"])
    (k, v), prefix_mask = nnx.jit(lambda m, o: m.prefix_cache(o))(oracle.model, oracle.obs)
    assert rel_err(k, oracle["sample/kv_cache_k"]) <= RTOL
    assert rel_err(v, oracle["sample/kv_cache_v"]) <= RTOL
    # Each Euler step's velocity from the cache, at openpi's own trajectory points.
    step_velocity = nnx.jit(lambda m, o, kv, pm, x, t: m.cached_velocity(o, kv, pm, x, t))
    batch = oracle["sample/noise"].shape[0]
    for i, t in enumerate(oracle["sample/t_steps"][:num_steps]):
        v_i = step_velocity(
            oracle.model, oracle.obs, (k, v), prefix_mask, oracle["sample/x_steps"][i], np.full(batch, t)
        )
        assert rel_err(v_i, oracle["sample/v_steps"][i]) <= RTOL, f"step {i}"
    actions = nnx.jit(lambda m, o, n: m.sample_actions(o, n, num_steps))(
        oracle.model, oracle.obs, oracle["sample/noise"]
    )
    assert rel_err(actions, oracle["sample/actions"]) <= RTOL


@pytest.mark.slow
def test_oracle_gradients(oracle):
    loss, grads = _loss_and_grads(
        oracle.model, oracle.obs, oracle["actions"], oracle["noise"], oracle["time"]
    )
    assert rel_err(loss, oracle["loss_mean"]) <= RTOL
    got = {"/".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(grads)}
    assert set(got) == set(oracle.params)
    ref = {path: oracle[f"grad/{path}"] for path in got}
    noise_floor = 1e-6 * max(np.linalg.norm(r) for r in ref.values())
    errors = {}
    for path, g in got.items():
        if np.linalg.norm(ref[path]) < noise_floor:
            # Zero in exact arithmetic (SigLIP's key bias: softmax ignores a per-query shift),
            # so the reference is rounding noise; ours must be noise of the same size.
            assert np.linalg.norm(g) < noise_floor, path
        else:
            errors[path] = rel_err(g, ref[path])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{worst}: {errors[worst]:.2e}"


def test_oracle_full_param_tree():
    reference = json.loads((FIXTURE_DIR / "pi0_full_param_shapes.json").read_text())
    expected = {path: tuple(entry["shape"]) for path, entry in reference["params"].items()}
    shapes = param_shapes(SIZES["pi0"])
    assert sorted(shapes) == sorted(expected)
    assert {p: s for p, s in shapes.items() if s != expected[p]} == {}
    assert sum(int(np.prod(s)) for s in shapes.values()) == reference["total_params"]
