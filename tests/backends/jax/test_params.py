"""Parameters by openpi name: export/load round trip, strict loading, abstract shapes."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from balanced_pi0.backends.jax.params import export_params, load_params, param_shapes, read_openpi_params
from balanced_pi0.backends.jax.pi0 import Pi0
from balanced_pi0.errors import InputError
from balanced_pi0.model_config import SIZES

CFG = SIZES["tiny"]


@pytest.fixture(scope="module")
def params() -> dict[str, np.ndarray]:
    """Random values for every parameter, from the abstract model (no init to compile)."""
    rng = np.random.default_rng(0)
    return {p: rng.normal(size=s).astype(np.float32) for p, s in param_shapes(CFG).items()}


def abstract_model() -> Pi0:
    return nnx.eval_shape(lambda: Pi0(CFG, nnx.Rngs(0)))


def test_names_are_openpi_paths(params):
    assert "PaliGemma/llm/layers/attn/q_einsum/w" in params
    assert "PaliGemma/llm/layers/mlp_1/gating_einsum" in params  # the action expert's MLP
    assert "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel" in params
    # layers stacked on the first axis
    assert params["PaliGemma/llm/layers/attn/q_einsum/w"].shape[0] == CFG.llm.depth
    assert all(v.dtype == np.float32 for v in params.values())


def test_load_then_export_round_trips(params):
    shifted = {k: v + 1.0 for k, v in params.items()}
    model = abstract_model()
    load_params(model, shifted)
    out = export_params(model)
    assert sorted(out) == sorted(shifted)
    assert all(np.array_equal(out[k], shifted[k]) for k in out)


def test_load_casts_to_float32(params):
    model = abstract_model()
    load_params(model, {k: v.astype(np.float16) for k, v in params.items()})
    out = export_params(model)
    assert out["state_proj/kernel"].dtype == np.float32
    np.testing.assert_array_equal(out["state_proj/kernel"], params["state_proj/kernel"].astype(np.float16))


def test_unknown_and_missing_names_are_listed(params):
    bad = dict(params)
    del bad["action_out_proj/bias"]
    bad["action_out_proj/bias_typo"] = params["action_out_proj/bias"]
    model = abstract_model()
    with pytest.raises(
        InputError, match=r"unknown \['action_out_proj/bias_typo'\], missing \['action_out_proj/bias'\]"
    ):
        load_params(model, bad)


def test_shape_mismatch_names_the_path(params):
    bad = dict(params)
    bad["state_proj/kernel"] = np.zeros((3, 3), np.float32)
    model = abstract_model()
    load_params(model, params)
    before = export_params(model)
    with pytest.raises(InputError, match=r"state_proj/kernel: got \(3, 3\)"):
        load_params(model, bad)
    after = export_params(model)  # nothing was loaded
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("nnx_state_leaves", [False, True], ids=["released", "training"])
def test_openpi_checkpoint_loads_by_name(params, tmp_path, nnx_state_leaves):
    ocp = pytest.importorskip("orbax.checkpoint")
    tree: dict = {}
    for path, value in params.items():  # openpi's nested layout, optionally with nnx.State's "value" leaves
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = {"value": value} if nnx_state_leaves else value
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(tmp_path / "params", {"params": tree})
    flat = read_openpi_params(tmp_path / "params")
    model = abstract_model()
    load_params(model, flat)
    out = export_params(model)
    assert all(np.array_equal(out[k], params[k]) for k in params)


def test_missing_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_openpi_params(tmp_path / "nope")
