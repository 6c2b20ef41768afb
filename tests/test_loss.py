"""The specification of the action loss (``balanced_pi0.loss``).

Everything is checked against a float64 NumPy reference written here, from the
semantics table, without reusing the module's code or the group layout object:
a padded step never counts (except under ``none``), model-padding dims never
count, weights are renormalised to mean 1 over what counts, and the four
reductions differ only in what they divide by.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from balanced_pi0 import config
from balanced_pi0.errors import InputError
from balanced_pi0.loss import PRESETS, LossSpec, action_loss, preset_config

# The R1Pro action layout (BEHAVIOR-1K ACTION_QPOS_INDICES), written out independently of groups.py.
GROUPS = {
    "base": range(0, 3),
    "torso": range(3, 7),
    "left_arm": range(7, 14),
    "left_gripper": range(14, 15),
    "right_arm": range(15, 22),
    "right_gripper": range(22, 23),
}
D_R = 23
STRATEGIES = ["uniform", "per_group", "per_dimension", "delta"]
MODES = ["token", "sample", "diluted", "none"]
MASKED_MODES = ["token", "sample", "diluted"]
GROUP_WEIGHTS = {"base": 0.5, "left_arm": 3.0, "right_arm": 2.0, "right_gripper": 1.5}


def dimension_weights_for(seed: int = 7) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).uniform(0.2, 4.0, D_R)]


def make_spec(strategy: str, mode: str, **kw) -> LossSpec:
    fields = {
        "uniform": {},
        "per_group": {"group_weights": GROUP_WEIGHTS},
        "delta": {"group_weights": GROUP_WEIGHTS},
    }
    fields["per_dimension"] = {"dimension_weights": dimension_weights_for()}
    return LossSpec(strategy=strategy, mask_normalization=mode, **fields[strategy], **kw)


# --------------------------------------------------------------------------------------
# Reference: loss = Σ coef[b,h,d] · e[b,h,d], written element by element
# --------------------------------------------------------------------------------------
def reference_weights(actions, counted, spec: LossSpec) -> np.ndarray:
    """w[b,h,d] over the real dims, renormalised to mean 1 over the counted steps."""
    b_size, horizon = counted.shape
    w = np.ones((b_size, horizon, D_R))
    for name, dims in GROUPS.items():
        group_w = dict(spec.group_weights).get(name, 1.0)
        if spec.strategy == "per_group":
            w[:, :, dims] = group_w
        elif spec.strategy == "per_dimension":
            w[:, :, dims] = [spec.dimension_weights[d] for d in dims]
        elif spec.strategy == "delta":
            motion = np.zeros((b_size, horizon))
            for b in range(b_size):
                for h in range(1, horizon):
                    motion[b, h] = np.linalg.norm(actions[b, h, dims] - actions[b, h - 1, dims])
            factor = np.clip(
                spec.delta_alpha + spec.delta_beta * np.minimum(motion, spec.delta_cap), 0.1, 3.0
            )
            if counted.any():
                factor = factor / factor[counted].mean()
            w[:, :, dims] = group_w * factor[:, :, None]
    if counted.any():
        w = w / w[counted].mean()
    return w


def reference_step_coef(counted, mode: str, n_dims: int) -> np.ndarray:
    """[B, H]: what one unit of error at a counted step adds to a loss averaged over n_dims dims."""
    b_size, horizon = counted.shape
    if mode == "token":
        return counted / max(counted.sum() * n_dims, 1)
    if mode == "sample":
        return np.stack([counted[b] / (max(counted[b].sum(), 1) * n_dims * b_size) for b in range(b_size)])
    return counted / (b_size * horizon * n_dims)  # diluted, none


def reference(e, pad, actions, spec: LossSpec):
    """float64 (loss, coef [B,H,D], group_loss, effective_group_weights)."""
    e, actions = np.asarray(e, np.float64), np.asarray(actions, np.float64)
    counted = np.ones_like(pad) if spec.mask_normalization == "none" else ~pad
    w = reference_weights(actions, counted, spec)
    coef = np.zeros(e.shape)
    coef[:, :, :D_R] = reference_step_coef(counted, spec.mask_normalization, D_R)[:, :, None] * w
    loss = float(np.sum(coef[coef != 0] * e[coef != 0]))
    group_loss, group_weight = {}, {}
    for name, dims in GROUPS.items():
        step_coef = reference_step_coef(counted, spec.mask_normalization, len(dims))
        group_loss[name] = float(
            sum(step_coef[b, h] * e[b, h, d] for b, h in zip(*np.nonzero(counted), strict=True) for d in dims)
        )
        group_weight[name] = float(w[counted][:, dims].mean()) if counted.any() else 0.0
    return loss, coef, group_loss, group_weight


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------
def random_batch(seed: int, b_size=None, horizon=None, width=None):
    """float32 sq_err, bool action_is_pad, float32 actions with LeRobot-style padding."""
    rng = np.random.default_rng(seed)
    b_size = b_size or int(rng.integers(1, 6))
    horizon = horizon or int(rng.integers(1, 13))
    width = width or int(rng.choice([D_R, 32]))
    sq_err = rng.exponential(1.0, (b_size, horizon, width)).astype(np.float32)
    actions = np.cumsum(rng.normal(0, 0.3, (b_size, horizon, width)), axis=1).astype(np.float32)
    real_steps = rng.integers(0, horizon + 1, b_size)  # 0: a sample with no real step
    real_steps[0] = max(real_steps[0], 1)
    pad = np.arange(horizon)[None, :] >= real_steps[:, None]
    for b in range(b_size):  # padded steps repeat the episode's last action
        if 0 < real_steps[b] < horizon:
            actions[b, real_steps[b] :] = actions[b, real_steps[b] - 1]
    return sq_err, pad, actions


def as_float(x) -> float:
    return float(np.asarray(x.detach() if isinstance(x, torch.Tensor) else x))


def loss_of(*args):
    return as_float(action_loss(*args)[0])


BATCH_SEEDS = range(3)
jit_action_loss = jax.jit(action_loss, static_argnums=3)


# --------------------------------------------------------------------------------------
# Every strategy × normalisation, three backends
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_numpy_float64_matches_reference(strategy, mode):
    spec = make_spec(strategy, mode)
    for seed in BATCH_SEEDS:
        e, pad, a = random_batch(seed)
        e, a = e.astype(np.float64), a.astype(np.float64)
        want_loss, _, want_groups, want_weights = reference(e, pad, a, spec)
        loss, info = action_loss(e, pad, a, spec)
        np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)
        np.testing.assert_allclose(float(info["pad_fraction"]), pad.mean(), rtol=1e-12)
        for g in GROUPS:
            np.testing.assert_allclose(float(info["group_loss"][g]), want_groups[g], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(
                float(info["effective_group_weights"][g]), want_weights[g], rtol=1e-12, atol=1e-15
            )


def _check_float32(backend_loss, spec, e, pad, a):
    want_loss, _, want_groups, want_weights = reference(e, pad, a, spec)
    loss, info = backend_loss
    assert np.asarray(loss.detach() if isinstance(loss, torch.Tensor) else loss).dtype == np.float32
    np.testing.assert_allclose(as_float(loss), want_loss, rtol=1e-6)
    for g in GROUPS:
        np.testing.assert_allclose(as_float(info["group_loss"][g]), want_groups[g], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(as_float(info["effective_group_weights"][g]), want_weights[g], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_jax_and_torch_float32_match_reference(strategy, mode):
    spec = make_spec(strategy, mode)
    for seed in BATCH_SEEDS:
        e, pad, a = random_batch(seed)
        _check_float32(
            jit_action_loss(jnp.asarray(e), jnp.asarray(pad), jnp.asarray(a), spec), spec, e, pad, a
        )
        _check_float32(
            action_loss(torch.from_numpy(e), torch.from_numpy(pad), torch.from_numpy(a), spec),
            spec,
            e,
            pad,
            a,
        )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradients_agree_between_jax_and_torch_and_equal_the_weights(strategy, mode):
    spec = make_spec(strategy, mode)
    e, pad, a = random_batch(11, b_size=4, horizon=9, width=32)
    grad_jax = jax.jit(jax.grad(lambda x: action_loss(x, jnp.asarray(pad), jnp.asarray(a), spec)[0]))(
        jnp.asarray(e)
    )
    e_torch = torch.from_numpy(e).requires_grad_(True)
    action_loss(e_torch, torch.from_numpy(pad), torch.from_numpy(a), spec)[0].backward()
    np.testing.assert_allclose(np.asarray(grad_jax), e_torch.grad.numpy(), rtol=1e-6, atol=1e-12)
    # The loss is linear in the error: its gradient is the reference coefficient of each element.
    _, coef, _, _ = reference(e, pad, a, spec)
    np.testing.assert_allclose(e_torch.grad.numpy(), coef, rtol=1e-6, atol=1e-12)


def test_low_precision_errors_are_reduced_in_float32():
    spec = make_spec("per_group", "token")
    e, pad, a = random_batch(8, width=32)
    e_bf16 = jnp.asarray(e, dtype=jnp.bfloat16)
    loss, _ = action_loss(e_bf16, jnp.asarray(pad), None, spec)
    assert loss.dtype == jnp.float32
    want = reference(np.asarray(e_bf16.astype(jnp.float32)), pad, a, spec)[0]
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)


def test_weights_carry_no_gradient():
    spec = make_spec("delta", "token")
    e, pad, a = random_batch(3, b_size=3, horizon=8, width=32)
    grad_a = jax.grad(lambda x: action_loss(jnp.asarray(e), jnp.asarray(pad), x, spec)[0])(jnp.asarray(a))
    assert not np.any(np.asarray(grad_a))
    a_torch = torch.from_numpy(a).requires_grad_(True)
    e_torch = torch.from_numpy(e).requires_grad_(True)
    loss, info = action_loss(e_torch, torch.from_numpy(pad), a_torch, spec)
    loss.backward()
    assert a_torch.grad is None
    assert not info["group_loss"]["base"].requires_grad


def test_jax_vmap_over_batches_equals_a_loop():
    spec = make_spec("delta", "sample")
    batches = [random_batch(s, b_size=3, horizon=6, width=32) for s in range(4)]
    stacked = [jnp.asarray(np.stack(x)) for x in zip(*batches, strict=True)]
    losses, infos = jax.jit(jax.vmap(lambda e, p, a: action_loss(e, p, a, spec)))(*stacked)
    for i, (e, pad, a) in enumerate(batches):
        np.testing.assert_allclose(float(losses[i]), reference(e, pad, a, spec)[0], rtol=1e-6)
        assert infos["group_loss"]["left_arm"].shape == (4,)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------
batch_seeds = st.integers(0, 2**32 - 1)
any_error = st.floats(0.0, math.inf) | st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=30, deadline=None)
@given(seed=batch_seeds, extra=st.integers(1, 6), strategy=st.sampled_from(STRATEGIES), data=st.data())
def test_appended_padding_changes_token_and_sample_not_diluted(seed, extra, strategy, data):
    e, pad, a = (x.astype(np.float64) if x.dtype == np.float32 else x for x in random_batch(seed))
    b_size, horizon, width = e.shape
    more_e = data.draw(hnp.arrays(np.float64, (b_size, extra, width), elements=any_error))
    more_a = data.draw(hnp.arrays(np.float64, (b_size, extra, width), elements=st.floats(-1e6, 1e6)))
    padded = (
        np.concatenate([e, more_e], axis=1),
        np.concatenate([pad, np.ones((b_size, extra), bool)], axis=1),
        np.concatenate([a, more_a], axis=1),
    )
    for mode in ("token", "sample"):
        spec = make_spec(strategy, mode)
        assert loss_of(*padded, spec) == pytest.approx(loss_of(e, pad, a, spec), rel=1e-12)
    spec = make_spec(strategy, "diluted")
    before, after = loss_of(e, pad, a, spec), loss_of(*padded, spec)
    assert after == pytest.approx(before * horizon / (horizon + extra), rel=1e-12)
    assert after < before


@settings(max_examples=30, deadline=None)
@given(seed=batch_seeds, mode=st.sampled_from(MODES))
def test_uniform_without_padding_is_the_plain_mean_over_real_dims(seed, mode):
    e, pad, _ = random_batch(seed)
    e = e.astype(np.float64)
    no_pad = np.zeros_like(pad)
    assert loss_of(e, no_pad, None, make_spec("uniform", mode)) == pytest.approx(
        e[:, :, :D_R].mean(), rel=1e-12
    )


@settings(max_examples=30, deadline=None)
@given(seed=batch_seeds, strategy=st.sampled_from(STRATEGIES), mode=st.sampled_from(MODES), data=st.data())
def test_padded_dims_never_influence_the_loss(seed, strategy, mode, data):
    e, pad, a = random_batch(seed, width=32)
    e, a = e.astype(np.float64), a.astype(np.float64)
    junk = hnp.arrays(np.float64, e[:, :, D_R:].shape, elements=any_error)
    e2, a2 = e.copy(), a.copy()
    e2[:, :, D_R:], a2[:, :, D_R:] = data.draw(junk), data.draw(junk)
    spec = make_spec(strategy, mode)
    assert loss_of(e2, pad, a2, spec) == loss_of(e, pad, a, spec)


@pytest.mark.parametrize("mode", MASKED_MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_padded_batch_gives_finite_loss_and_zero_gradients(strategy, mode):
    spec = make_spec(strategy, mode)
    e, _, a = random_batch(5, b_size=3, horizon=7, width=32)
    pad = np.ones((3, 7), bool)
    loss, grad = jax.value_and_grad(lambda x: action_loss(x, jnp.asarray(pad), jnp.asarray(a), spec)[0])(
        jnp.asarray(e)
    )
    assert float(loss) == 0.0 and not np.any(np.asarray(grad))
    e_torch = torch.from_numpy(e).requires_grad_(True)
    loss, info = action_loss(e_torch, torch.from_numpy(pad), torch.from_numpy(a), spec)
    loss.backward()
    assert as_float(loss) == 0.0 and not e_torch.grad.any()
    assert all(math.isfinite(as_float(v)) for v in info["group_loss"].values())
    assert as_float(info["pad_fraction"]) == 1.0


def test_a_sample_without_real_steps_contributes_zero_under_sample():
    e, pad, a = random_batch(2, b_size=3, horizon=6, width=32)
    pad[1] = True
    spec = make_spec("per_group", "sample")
    # Sample 1 has no real step: it contributes 0 and still counts in the batch mean.
    others = [loss_of(e[[b]], pad[[b]], a[[b]], spec) for b in (0, 2)]
    assert loss_of(e, pad, a, spec) == pytest.approx(sum(others) / 3, rel=1e-6)


def test_sample_normalisation_equals_the_seed_formula():
    # The seed fix: mean(mean_d(e)·¬pad · H/clip(Σ¬pad, 1)), here over the real dims.
    for seed in range(5):
        e, pad, _ = random_batch(seed)
        e = e.astype(np.float64)
        horizon = pad.shape[1]
        real = ~pad
        per_step = e[:, :, :D_R].mean(axis=-1) * real
        seed_loss = np.mean(per_step * horizon / np.clip(real.sum(axis=1, keepdims=True), 1, None))
        assert loss_of(e, pad, None, make_spec("uniform", "sample")) == pytest.approx(seed_loss, rel=1e-12)


def test_none_trains_on_padding_as_upstream():
    e, pad, a = random_batch(4, width=32)
    e = e.astype(np.float64)
    spec = make_spec("uniform", "none")
    assert pad.any()
    assert loss_of(e, pad, a, spec) == pytest.approx(e[:, :, :D_R].mean(), rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", ["uniform", "per_group"])
def test_loss_decomposes_into_weighted_group_losses(strategy, mode):
    # With fixed weights, the loss is the dim-share × effective weight × unweighted group loss.
    e, pad, a = random_batch(9, width=32)
    spec = make_spec(strategy, mode)
    loss, info = action_loss(e.astype(np.float64), pad, a, spec)
    parts = [
        len(dims) / D_R * info["effective_group_weights"][g] * info["group_loss"][g]
        for g, dims in GROUPS.items()
    ]
    assert float(loss) == pytest.approx(float(sum(parts)), rel=1e-12)


def test_delta_keeps_the_static_effective_weights():
    # The motion factor has mean 1 per group over the valid steps, so the group means are the static ones.
    spec = make_spec("delta", "token")
    e, pad, a = random_batch(1, b_size=4, horizon=10)
    _, info = action_loss(e.astype(np.float64), pad, a.astype(np.float64), spec)
    for g, want in spec.effective_group_weights().items():
        assert float(info["effective_group_weights"][g]) == pytest.approx(want, rel=1e-12)


def test_delta_weights_follow_motion():
    # One moving arm: its steps weigh more than the still groups, with the seed's bounds.
    spec = make_spec("delta", "token")
    actions = np.zeros((1, 5, 32))
    actions[0, :, 7] = [0.0, 0.4, 0.8, 0.8, 0.8]  # left arm moves 0.4 per step, then stops
    coef = reference(np.ones((1, 5, 32)), np.zeros((1, 5), bool), actions, spec)[1]
    e = np.zeros((1, 5, 32))
    e[0, :, 7] = 1.0
    e_torch = torch.from_numpy(e).requires_grad_(True)
    action_loss(e_torch, torch.zeros(1, 5, dtype=torch.bool), torch.from_numpy(actions), spec)[0].backward()
    g = e_torch.grad.numpy()
    np.testing.assert_allclose(g, coef, rtol=1e-12)
    assert g[0, 1, 7] > g[0, 0, 7] and g[0, 1, 7] == g[0, 2, 7] and g[0, 3, 7] == g[0, 0, 7]
    # Still groups keep a constant factor; their steps all weigh the same.
    assert np.allclose(g[0, :, 0], g[0, 0, 0])


# --------------------------------------------------------------------------------------
# Specs, configs and presets
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"strategy": "focal"}, "strategy"),
        ({"mask_normalization": "mean"}, "mask_normalization"),
        ({"strategy": "per_dimension", "dimension_weights": [1.0] * 22}, "dimension_weights"),
        ({"strategy": "per_dimension"}, "dimension_weights"),
        (
            {"strategy": "per_dimension", "dimension_weights": [1.0] * 3 + [-1.0] * 20},
            r"dimension_weights\[3\]",
        ),
        ({"strategy": "per_group", "group_weights": {"left_arm": -2.0}}, r"group_weights\.left_arm"),
        ({"strategy": "per_group", "group_weights": {"left_arm": 0.0}}, r"group_weights\.left_arm"),
        ({"strategy": "per_group", "group_weights": {"arms": 3.0}}, "group_weights"),
        ({"strategy": "uniform", "group_weights": {"left_arm": 3.0}}, "group_weights"),
        ({"strategy": "per_group", "dimension_weights": [1.0] * 23}, "dimension_weights"),
        ({"strategy": "delta", "delta_alpha": math.nan}, "delta_alpha"),
        ({"strategy": "delta", "delta_cap": -0.5}, "delta_cap"),
        ({"layout": "r2d2"}, "layout"),
    ],
)
def test_bad_specs_raise_naming_the_field(fields, named):
    with pytest.raises(InputError, match=named):
        LossSpec(**fields)


def test_bad_inputs_raise():
    e, pad, a = random_batch(0, b_size=2, horizon=4, width=32)
    spec = make_spec("delta", "token")
    with pytest.raises(InputError, match="action_is_pad"):
        action_loss(e, pad[:, :3], a, spec)
    with pytest.raises(InputError, match="action_is_pad"):
        action_loss(e, pad.astype(np.float32), a, spec)
    with pytest.raises(InputError, match="actions"):
        action_loss(e, pad, None, spec)
    with pytest.raises(InputError, match="real_action_dim"):
        action_loss(e[:, :, :20], pad, a[:, :, :20], spec)


def test_from_config_reads_the_typed_params():
    params = config.from_dict(
        {
            "train": {
                "loss": {
                    "strategy": "per_group",
                    "mask_normalization": "sample",
                    "group_weights": {"torso": 2.0},
                }
            }
        }
    )
    spec = LossSpec.from_config(params)
    assert spec == LossSpec.from_config(params.train.loss, params.layout)
    assert (spec.strategy, spec.mask_normalization, dict(spec.group_weights)) == (
        "per_group",
        "sample",
        {"torso": 2.0},
    )
    assert hash(spec) == hash(LossSpec("per_group", "sample", group_weights={"torso": 2.0}))
    bad = config.LossConfig(strategy="per_group", group_weights={"left_arm": -1.0})
    with pytest.raises(InputError, match=r"train\.loss\.group_weights\.left_arm"):
        LossSpec.from_config(bad)


def test_presets_build_and_quote_effective_weights():
    # Effective weight of a group = raw weight / mean raw weight over the 23 real dims.
    sizes = {g: len(dims) for g, dims in GROUPS.items()}
    arm = {"left_arm", "right_arm"}
    raw = {
        "uniform": dict.fromkeys(GROUPS, 1.0),
        "arm_focused": {g: 3.0 if g in arm else 1.0 for g in GROUPS},
        "very_arm_focused": {g: 5.0 if g in arm else 1.0 for g in GROUPS},
        "per_dimension": {"base": 1.0, "torso": 1.5, "left_arm": 2.5, "right_arm": 2.5}
        | {"left_gripper": 2.0, "right_gripper": 2.0},
        "delta": {g: 3.0 if g in arm else 1.0 for g in GROUPS},
    }
    assert set(PRESETS) == set(raw)
    for name, group_raw in raw.items():
        mean = sum(group_raw[g] * sizes[g] for g in GROUPS) / D_R
        spec = LossSpec.from_config(preset_config(name))
        got = spec.effective_group_weights()
        print(f"{name:17s}", "  ".join(f"{g}={v:.3f}" for g, v in got.items()))
        assert got == pytest.approx({g: group_raw[g] / mean for g in GROUPS}, rel=1e-12)
        e, pad, a = random_batch(6, width=32)
        measured = action_loss(e.astype(np.float64), pad, a.astype(np.float64), spec)[1][
            "effective_group_weights"
        ]
        assert {g: float(v) for g, v in measured.items()} == pytest.approx(got, rel=1e-12)


def test_per_dimension_preset_follows_the_action_order_not_the_state_order():
    w = PRESETS["per_dimension"]["dimension_weights"]
    assert len(w) == D_R
    assert w[14] == w[22] == 2.0  # the grippers sit at 14 and 22 ...
    assert w[7:14] == w[15:22] == [2.5] * 7  # ... between and after the arms, not at 21:23
    assert w != [1.0] * 3 + [1.5] * 4 + [2.5] * 14 + [2.0] * 2


def test_preset_config_keeps_the_base_normalisation():
    cfg = preset_config("delta", config.LossConfig(mask_normalization="sample", delta_cap=0.3))
    assert (cfg.strategy, cfg.mask_normalization, cfg.delta_cap) == ("delta", "sample", 0.3)
    with pytest.raises(InputError, match="preset"):
        preset_config("focal")
    assert dataclasses.replace(LossSpec.from_config(cfg), mask_normalization="token").strategy == "delta"
