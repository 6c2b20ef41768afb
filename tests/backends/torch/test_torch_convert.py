"""The JAX <-> torch parameter converter: complete, exact both ways, consuming, loud on mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from balanced_pi0.backends.torch.convert import (
    export_params,
    jax_to_torch,
    load_params,
    param_shapes,
    pi0_from_jax,
    torch_param_shapes,
    torch_to_jax,
)
from balanced_pi0.backends.torch.pi0 import Pi0
from balanced_pi0.errors import InputError
from balanced_pi0.model_config import SIZES

FULL_SHAPES = (
    Path(__file__).resolve().parents[2] / "fixtures" / "openpi_pi0_oracle" / "pi0_full_param_shapes.json"
)
TINY = SIZES["tiny"]


def _random_jax_params(config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in param_shapes(config).items()}


def test_oracle_full_param_shapes():
    """The full-size tree is openpi's, name for name and shape for shape (no allocation)."""
    ref = json.loads(FULL_SHAPES.read_text())["params"]
    assert param_shapes(SIZES["pi0"]) == {k: tuple(v["shape"]) for k, v in ref.items()}


@pytest.mark.parametrize("size", ["tiny", "dummy", "pi0"])
def test_rules_cover_the_torch_model_exactly(size):
    """Every torch param is produced once, with its shape (full size built on the meta device)."""
    config = SIZES[size]
    with torch.device("meta"):
        expected = {n: tuple(p.shape) for n, p in Pi0(config).state_dict().items()}
    assert torch_param_shapes(config) == expected


def test_jax_to_torch_to_jax_is_bit_identical():
    src = _random_jax_params(TINY)
    model = Pi0(TINY)
    load_params(model, {k: v.copy() for k, v in src.items()})
    back = export_params(model)
    assert back.keys() == src.keys()
    for k, v in src.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_torch_to_jax_to_torch_is_bit_identical():
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in Pi0(TINY).state_dict().items()}
    back = jax_to_torch(torch_to_jax(dict(state), TINY), TINY)
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(back[k], v), k


def test_layouts_mean_what_openpi_means():
    """Spot checks, by hand, of the axis conventions the round trips cannot see."""
    src = _random_jax_params(TINY)
    q = src["PaliGemma/llm/layers/attn/q_einsum_1/w"]  # [L, N, D, H]
    gate = src["PaliGemma/llm/layers/mlp/gating_einsum"]  # [L, 2, D, F]
    conv = src["PaliGemma/img/embedding/kernel"]  # [p, p, C, W]
    sd = jax_to_torch(dict(src), TINY)
    x = np.random.default_rng(1).standard_normal(q.shape[2]).astype(np.float32)
    heads = q.shape[1]
    # q_proj(x) split into heads equals einsum("D,NDH->NH", x, w)
    got = (sd["llm.experts.1.layers.1.attn.q_proj.weight"].numpy() @ x).reshape(heads, -1)
    np.testing.assert_allclose(got, np.einsum("d,ndh->nh", x, q[1]), rtol=1e-5)
    np.testing.assert_array_equal(sd["llm.experts.0.layers.0.mlp.up_proj.weight"].numpy(), gate[0, 1].T)
    np.testing.assert_array_equal(sd["vision.patch_embed.weight"].numpy()[5, 2, 1, 3], conv[1, 3, 2, 5])


def test_conversion_consumes_its_input_and_shares_memory_where_it_can():
    src = _random_jax_params(TINY)
    table = src["PaliGemma/llm/embedder/input_embedding"]
    sd = jax_to_torch(src, TINY)
    assert src == {}  # consumed: the caller's dict no longer pins the source arrays
    assert np.shares_memory(sd["llm.embed_tokens.weight"].numpy(), table)  # a view, not a copy
    back = torch_to_jax(sd, TINY)
    assert sd == {}
    assert not np.shares_memory(back["PaliGemma/llm/embedder/input_embedding"], table)


def test_bfloat16_params_convert_exactly():
    src = {k: v.astype(ml_dtypes.bfloat16) for k, v in _random_jax_params(TINY).items()}
    sd = jax_to_torch({k: v.copy() for k, v in src.items()}, TINY)
    assert sd["action_out_proj.weight"].dtype == torch.bfloat16
    back = torch_to_jax(sd, TINY)
    for k, v in src.items():
        assert back[k].dtype == ml_dtypes.bfloat16 and np.array_equal(
            back[k].view(np.uint16), v.view(np.uint16)
        )


def test_missing_and_unknown_names_are_listed():
    src = _random_jax_params(TINY)
    del src["state_proj/bias"]
    src["PaliGemma/llm/layers/attn/q_einsum_2/w"] = np.zeros(1, np.float32)
    with pytest.raises(InputError, match=r"missing \['state_proj/bias'\].*q_einsum_2"):
        jax_to_torch(src, TINY)
    state = Pi0(TINY).state_dict()
    state.pop("vision.head.bias")
    with pytest.raises(InputError, match=r"vision\.head\.bias"):
        torch_to_jax(state, TINY)
    state = Pi0(TINY).state_dict()
    state["state_proj.weight"] = state["state_proj.weight"].T
    with pytest.raises(InputError, match=r"state_proj\.weight"):
        torch_to_jax(state, TINY)


def test_wrong_shape_is_an_input_error():
    src = _random_jax_params(TINY)
    src["action_out_proj/kernel"] = src["action_out_proj/kernel"][:, :5]
    with pytest.raises(InputError, match="action_out_proj/kernel"):
        jax_to_torch(src, TINY)


def test_pi0_from_jax_assigns_views_and_computes_the_same():
    src = _random_jax_params(TINY, seed=3)
    table = src["PaliGemma/llm/embedder/input_embedding"]
    copied = Pi0(TINY)
    load_params(copied, {k: v.copy() for k, v in src.items()})
    assigned = pi0_from_jax(src, TINY)
    assert np.shares_memory(assigned.llm.embed_tokens.weight.detach().numpy(), table)
    for (name, a), b in zip(assigned.state_dict().items(), copied.state_dict().values(), strict=True):
        assert a.device.type == "cpu" and torch.equal(a, b), name
