"""Model inputs: openpi's normalisation (floored std, per-timestep actions), padding, images, prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balanced_pi0 import config as _config
from balanced_pi0.errors import InputError
from balanced_pi0.groups import R1PRO, LayoutError, from_delta_actions, to_delta_actions
from balanced_pi0.policy_io import (
    STD_EPS,
    NormStats,
    PolicyIO,
    camera_map,
    images_to_model,
    load_norm_stats,
    normalize,
    pad_to_dim,
    unnormalize,
)

H, D = 5, 23


def stats(shape, seed=0, std_scale=1.0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=shape)
    std = rng.uniform(0.5, 2.0, size=shape) * std_scale
    return NormStats(mean, std, mean - 2 * std, mean + 2 * std)


def write_stats(path, state: NormStats, actions: NormStats):
    def doc(s):
        return {k: np.asarray(getattr(s, k)).tolist() for k in ("mean", "std", "q01", "q99")}

    path.write_text(json.dumps({"norm_stats": {"state": doc(state), "actions": doc(actions)}}))


def test_normalize_is_openpi_z_score_and_unnormalize_inverts_it():
    s = stats(D)
    x = np.random.default_rng(1).normal(size=(4, H, D)).astype(np.float32)
    z = normalize(x, s, min_std=1e-2)
    np.testing.assert_allclose(z, (x - s.mean) / (s.std + STD_EPS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unnormalize(z, s, min_std=1e-2), x, rtol=1e-5, atol=1e-5)


def test_the_std_floor_is_applied_when_normalising_exact_file_statistics(tmp_path):
    """Files hold the data's std (0.0096 here); PolicyIO floors it at min_std, once, in both directions."""
    std = np.ones(D)
    std[22] = 0.0096
    exact = NormStats(np.zeros(D), std, -2 * std, 2 * std)
    write_stats(tmp_path / "standard.json", exact, exact)
    params = _config.from_dict({"normstats": {"min_std": 0.01}})
    io = PolicyIO.from_params(params, tmp_path)
    assert io.norm_stats["actions"].std[22] == 0.0096
    x = np.zeros((1, 1, D), np.float32)
    x[..., 22] = 0.05
    z = io.actions(x, np.zeros((1, D), np.float32))
    assert z[0, 0, 22] == pytest.approx(0.05 / (0.01 + STD_EPS))
    np.testing.assert_allclose(io.robot_actions(z, np.zeros((1, D))), x, atol=1e-6)


def test_std_is_floored_for_constant_dimensions():
    s = NormStats(np.zeros(D), np.r_[np.zeros(1), np.ones(D - 1)], np.zeros(D), np.zeros(D))
    z = normalize(np.full((1, D), 0.05, np.float32), s, min_std=0.1)
    assert z[0, 0] == pytest.approx(0.05 / (0.1 + STD_EPS))
    assert np.all(np.isfinite(z))


def test_per_timestep_stats_normalise_each_horizon_step():
    s = stats((H, D))
    x = np.broadcast_to(s.mean, (3, H, D)).copy()
    x[:, 2, :] += s.std[2]  # one std above step 2's mean
    z = normalize(x, s, min_std=1e-3)
    np.testing.assert_allclose(z[:, 2], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(z, 2, axis=1), 0.0, atol=1e-6)


def test_stats_of_another_horizon_are_rejected():
    with pytest.raises(InputError, match=r"stats' shape \(5, 23\)"):
        normalize(np.zeros((2, 10, D), np.float32), stats((H, D)), 1e-2)


def test_pad_to_dim_zero_pads_and_refuses_to_truncate():
    x = np.ones((2, 3, D), np.float32)
    y = pad_to_dim(x, 32)
    assert y.shape == (2, 3, 32) and np.all(y[..., :D] == 1) and np.all(y[..., D:] == 0)
    with pytest.raises(InputError, match="action_dim 16"):
        pad_to_dim(x, 16)


def test_images_map_to_minus_one_one_and_resize_with_padding():
    img = np.zeros((2, 32, 64, 3), np.uint8)
    img[..., 0] = 255
    out = images_to_model(img, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    # 32x64 -> 16x32 centred: rows 8..24 are the image (red), the bands above and below are black
    np.testing.assert_allclose(out[:, 8:24, :, 0], 1.0)
    np.testing.assert_allclose(out[:, :8], -1.0)
    np.testing.assert_allclose(out[:, 24:], -1.0)
    same = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(images_to_model(same, 32), same / 127.5 - 1.0, atol=1e-6)
    with pytest.raises(InputError, match="uint8"):
        images_to_model(same.astype(np.float32), 32)


def test_load_norm_stats_names_the_file_and_key(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_norm_stats(tmp_path / "standard.json")
    (tmp_path / "bad.json").write_text(json.dumps({"norm_stats": {"state": {"mean": [0.0]}}}))
    with pytest.raises(InputError, match=r"bad.json: norm_stats.state lacks \['std', 'q01', 'q99'\]"):
        load_norm_stats(tmp_path / "bad.json")


def test_from_params_builds_the_model_batch_of_a_loader_batch(tmp_path):
    s_state, s_act = stats(D, 0), stats((10, D), 1)
    write_stats(tmp_path / "per_timestep.json", s_state, s_act)
    params = _config.from_dict(
        {
            "train": {"norm_stats": "per_timestep"},
            "dataset": {"cameras": ["head", "left_wrist"]},
            "model": {"empty_cameras": 1},
        }
    )
    io = PolicyIO.from_params(params, tmp_path)
    rng = np.random.default_rng(0)
    batch = {
        "images": {c: rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8) for c in ("head", "left_wrist")},
        "state": rng.normal(size=(2, D)).astype(np.float32),
        "actions": rng.normal(size=(2, 10, D)).astype(np.float32),
        "action_is_pad": np.zeros((2, 10), bool),
        "prompt": ["reach the cube", "reach"],
    }
    out = io.model_batch(batch)
    obs = out["observation"]
    assert obs["state"].shape == (2, 32) and out["actions"].shape == (2, 10, 32)
    assert set(obs["images"]) == {"base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"}
    np.testing.assert_array_equal(obs["image_masks"]["base_0_rgb"], [True, True])
    np.testing.assert_array_equal(obs["image_masks"]["right_wrist_0_rgb"], [False, False])
    assert obs["tokenized_prompt"].shape == (2, 16) and obs["tokenized_prompt"].dtype == np.int32
    assert obs["tokenized_prompt_mask"][0].sum() > obs["tokenized_prompt_mask"][1].sum()
    np.testing.assert_allclose(
        io.robot_actions(out["actions"], batch["state"]), batch["actions"], rtol=1e-5, atol=1e-5
    )


def test_the_model_takes_the_dataset_cameras_and_the_empty_ones(tmp_path):
    write_stats(tmp_path / "standard.json", stats(D, 0), stats(D, 1))
    params = _config.from_dict({"dataset": {"cameras": ["head"]}, "model": {"empty_cameras": 0}})
    assert PolicyIO.from_params(params, tmp_path).model_cameras == ("base_0_rgb",)
    with pytest.raises(_config.ConfigError, match=r"model\.empty_cameras \(3\): pi0 has 3 image inputs"):
        _config.from_dict({"dataset": {"cameras": ["head"]}, "model": {"empty_cameras": 3}})


def test_more_dataset_cameras_than_model_inputs_is_an_error():
    with pytest.raises(InputError, match=r"dataset\.cameras"):
        camera_map(["a", "b", "c", "d"], ["x", "y", "z"])


def test_delta_actions_subtract_the_chunks_first_state_on_the_mask_and_invert_exactly():
    rng = np.random.default_rng(3)
    mask = R1PRO.delta_mask()
    state = rng.normal(size=(2, 26)).astype(np.float32)  # the layout's 23 dims, then more
    actions = rng.normal(size=(2, H, D)).astype(np.float32)
    delta = to_delta_actions(actions, state, mask)
    np.testing.assert_array_equal(delta[..., ~mask], actions[..., ~mask])
    for h in range(H):
        np.testing.assert_allclose(delta[:, h, mask], actions[:, h, mask] - state[:, :D][:, mask], atol=1e-6)
    np.testing.assert_allclose(from_delta_actions(delta, state, mask), actions, atol=1e-6)
    with pytest.raises(InputError, match="state must start with the action layout"):
        to_delta_actions(actions, state[:, :10], mask)


def test_winners_r1pro_mask_deltas_torso_3_to_6_and_both_arms():
    mask = R1PRO.delta_mask()
    assert np.flatnonzero(mask).tolist() == [3, 4, 5, *range(7, 14), *range(15, 22)]


def test_delta_actions_need_delta_statistics(tmp_path):
    s_state, s_act = stats(26, 0), stats((10, D), 1)
    write_stats(tmp_path / "per_timestep.json", s_state, s_act)
    params = _config.from_dict({"train": {"norm_stats": "delta_per_timestep", "delta_actions": True}})
    with pytest.raises(InputError, match="norm stats file not found"):
        PolicyIO.from_params(params, tmp_path)
    (tmp_path / "delta_per_timestep.json").write_text((tmp_path / "per_timestep.json").read_text())
    with pytest.raises(InputError, match="statistics of absolute actions, but training uses delta"):
        PolicyIO.from_params(params, tmp_path)
    doc = json.loads((tmp_path / "per_timestep.json").read_text())
    doc["delta_mask"] = R1PRO.delta_mask().tolist()
    (tmp_path / "delta_per_timestep.json").write_text(json.dumps(doc))
    io = PolicyIO.from_params(params, tmp_path)
    rng = np.random.default_rng(5)
    state = rng.normal(size=(2, 26)).astype(np.float32)
    actions = rng.normal(size=(2, 10, D)).astype(np.float32)
    np.testing.assert_allclose(io.robot_actions(io.actions(actions, state), state), actions, atol=1e-5)


def test_delta_actions_and_norm_stats_must_agree_in_params():
    with pytest.raises(_config.ConfigError, match=r"delta_actions and train\.norm_stats go together"):
        _config.from_dict({"train": {"delta_actions": True}})
    with pytest.raises(_config.ConfigError, match="go together"):
        _config.from_dict({"train": {"norm_stats": "delta_per_timestep"}})


def test_state_hidden_feeds_the_groups_state_as_its_mean_and_names_unknown_groups(tmp_path):
    write_stats(tmp_path / "standard.json", stats(32, 0), stats((10, D), 1))
    seen = PolicyIO.from_params(_config.from_dict({"model": {"state_hidden": []}}), tmp_path)
    hidden = PolicyIO.from_params(_config.from_dict({}), tmp_path)  # the default hides the base
    rng = np.random.default_rng(6)
    images = {"head": np.zeros((2, 32, 32, 3), np.uint8)}
    batch = {"state": rng.normal(size=(2, 32)).astype(np.float32), "images": images, "prompt": ["a", "b"]}
    full, masked = seen.observation(batch)["state"], hidden.observation(batch)["state"]
    base = list(R1PRO.group("base").indices)
    assert np.all(masked[:, base] == 0.0) and np.any(full[:, base] != 0.0)
    rest = [i for i in range(full.shape[1]) if i not in base]
    np.testing.assert_array_equal(masked[:, rest], full[:, rest])
    assert batch["state"][0, 0] != 0.0  # the caller's array is untouched
    with pytest.raises(LayoutError, match="no group 'wheels'"):
        PolicyIO.from_params(_config.from_dict({"model": {"state_hidden": ["wheels"]}}), tmp_path)
