"""Norm statistics: exact moments, global quantiles within (max − min)/10⁴, no floor, variants."""

import json

import numpy as np
import pytest

from balanced_pi0.errors import InputError
from balanced_pi0.groups import R1PRO
from balanced_pi0.prep import normstats as ns

from .conftest import columns, write_lerobot

BINS = 10_000  # the smallest the params allow: the tolerance below is for this


def _tolerance(x):
    return (x.max(axis=0) - x.min(axis=0)) / 1e4


def _check_against_numpy(stats, x):
    x = np.asarray(x, dtype=np.float64)
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.std, x.std(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.min, x.min(axis=0))
    np.testing.assert_array_equal(stats.max, x.max(axis=0))
    for q, got in ((0.01, stats.q01), (0.99, stats.q99)):
        err = np.abs(got - np.quantile(x, q, axis=0))
        assert np.all(err <= _tolerance(x)), (q, err, _tolerance(x))


@pytest.mark.parametrize("block_rows", [7, 1 << 16])  # many merged blocks, and one
def test_streaming_stats_match_numpy_on_awkward_distributions(monkeypatch, block_rows):
    monkeypatch.setattr(ns, "BLOCK_ROWS", block_rows)
    rng = np.random.default_rng(1)
    n = 3001
    x = np.stack(
        [
            rng.standard_cauchy(n),  # heavy tails: most mass in a few bins
            rng.integers(0, 5, n).astype(float),  # ties at bin edges
            np.full(n, 2.5),  # constant
            1e4 + rng.normal(0, 1e-3, n),  # large offset, tiny spread (cancellation)
            np.where(rng.random(n) < 0.995, 0.0, 1.0),  # q99 falls in a sparse tail
        ],
        axis=1,
    ).astype(np.float32)
    stats = ns.feature_stats(ns.column_blocks(x), bins=BINS)
    _check_against_numpy(stats, x)
    assert stats.count == n


def test_per_episode_constant_dimension_lerobot_is_wrong_ours_is_right(tmp_path):
    # dimension 0 is constant within each episode (its index), as a task id or a fixed pose would be
    eps = [np.stack([np.full(6, float(e)), np.linspace(0, 1, 6) + e], axis=1) for e in range(20)]
    root = write_lerobot(tmp_path / "ds", eps)
    lerobot = json.loads((root / "meta" / "stats.json").read_text())["action"]
    x = np.concatenate(eps).astype(np.float32).astype(np.float64)  # as stored
    truth_q01, truth_q99 = np.quantile(x, 0.01, axis=0), np.quantile(x, 0.99, axis=0)
    # LeRobot 0.6.1 averages per-episode quantiles: both land on the mean episode id
    assert lerobot["q01"][0] == pytest.approx(9.5) and lerobot["q99"][0] == pytest.approx(9.5)
    assert abs(lerobot["q01"][0] - truth_q01[0]) > 9 and abs(lerobot["q99"][0] - truth_q99[0]) > 9
    ours = ns.feature_stats(ns.column_blocks(x), bins=BINS)
    _check_against_numpy(ours, x)


def test_files_hold_exact_statistics_of_near_constant_dimensions():
    """No floor in the file: a dim of std 0.0096 stores 0.0096 (normalisation floors it, policy_io)."""
    rng = np.random.default_rng(11)
    near = rng.normal(size=400)
    near = 0.0096 * (near - near.mean()) / near.std()
    eps = [np.stack([np.zeros(100), np.linspace(-1, 1, 100), near[i::4]], axis=1) for i in range(4)]
    data = columns(eps)
    doc = ns.compute_variants(data, ["standard"], layout=R1PRO, bins=BINS, min_std=0.01, horizon=2)[
        "standard"
    ]
    x = data.action.astype(np.float64)  # the stored (float32) values
    actions = doc["norm_stats"]["actions"]
    np.testing.assert_allclose(actions["std"], x.std(axis=0), rtol=1e-10, atol=1e-12)
    assert actions["std"][0] == 0.0 and actions["std"][2] == pytest.approx(0.0096, rel=1e-6)
    np.testing.assert_allclose(actions["q01"], np.quantile(x, 0.01, axis=0), atol=(x.max() - x.min()) / BINS)
    assert doc["below_min_std"]["actions"] == [0, 2]


def test_balanced_variant_reproduces_the_seed_formula():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 23)) * np.linspace(0.1, 3.0, 23)
    std_stats = ns.feature_stats(ns.column_blocks(x), bins=BINS)
    balanced, report = ns.balance_groups(std_stats, R1PRO)
    # the seed, written out independently: target = median of per-group mean std
    spans = [(0, 3), (3, 7), (7, 14), (14, 15), (15, 22), (22, 23)]
    std, mean = x.std(axis=0), x.mean(axis=0)
    q01, q99 = std_stats.q01, std_stats.q99
    target = np.median([std[a:b].mean() for a, b in spans])
    for a, b in spans:
        s = target / (std[a:b].mean() + 1e-8)
        np.testing.assert_allclose(balanced.std[a:b], std[a:b] * s, rtol=1e-10)
        np.testing.assert_allclose(balanced.q01[a:b], mean[a:b] - (q99[a:b] - q01[a:b]) * s / 2, rtol=1e-10)
        np.testing.assert_allclose(balanced.q99[a:b], mean[a:b] + (q99[a:b] - q01[a:b]) * s / 2, rtol=1e-10)
    np.testing.assert_array_equal(balanced.mean, std_stats.mean)
    assert report["target_std"] == pytest.approx(target)
    # what it does to normalised magnitudes: group g's z-scored std is mean_std_g / target, not 1
    for g, (a, b) in zip(R1PRO.group_names, spans, strict=True):
        z = (x[:, a:b] - balanced.mean[a:b]) / balanced.std[a:b]
        assert z.std(axis=0).mean() == pytest.approx(report["groups"][g]["normalised_std"], rel=1e-6)
        assert report["groups"][g]["normalised_std"] == pytest.approx(std[a:b].mean() / target, rel=1e-6)


def test_per_timestep_stats_are_over_unpadded_chunk_steps():
    rng = np.random.default_rng(4)
    eps = [rng.normal(size=(n, 3)) for n in (5, 2, 8)]
    data = columns(eps)
    horizon = 4
    stats = ns.per_timestep_stats(data, horizon, bins=BINS)
    assert stats.mean.shape == (horizon, 3)
    for h in range(horizon):
        # LeRobot's chunk semantics spelled out: index clamped to the last frame, is_pad past the end
        rows = [ep[min(t + h, len(ep) - 1)] for ep in eps for t in range(len(ep)) if t + h < len(ep)]
        x = np.asarray(np.stack(rows), dtype=np.float32).astype(np.float64)
        np.testing.assert_allclose(stats.mean[h], x.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats.std[h], x.std(axis=0), rtol=1e-6)
        for q, got in ((0.01, stats.q01[h]), (0.99, stats.q99[h])):
            assert np.all(np.abs(got - np.quantile(x, q, axis=0)) <= _tolerance(x))


def test_delta_per_timestep_stats_are_over_action_minus_the_chunks_first_state():
    rng = np.random.default_rng(6)
    eps = [rng.normal(size=(n, 3)) for n in (5, 9)]
    states = [np.c_[rng.normal(size=(len(a), 3)), np.ones((len(a), 2))] for a in eps]  # wider state
    data = columns(eps, states)
    mask = np.array([True, False, True])
    stats = ns.per_timestep_stats(data, 3, bins=BINS, delta_mask=mask)
    for h in range(3):
        rows = [
            a[t + h] - np.where(mask, s[t, :3], 0.0)
            for a, s in zip(eps, states, strict=True)
            for t in range(len(a))
            if t + h < len(a)
        ]
        x = np.stack([np.float32(r) for r in rows]).astype(np.float64)
        np.testing.assert_allclose(stats.mean[h], x.mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(stats.std[h], x.std(axis=0), rtol=1e-5)


def test_delta_variant_records_its_mask():
    rng = np.random.default_rng(7)
    eps = [rng.normal(size=(12, 23)) for _ in range(3)]
    docs = ns.compute_variants(
        columns(eps), ["delta_per_timestep"], layout=R1PRO, bins=BINS, min_std=1e-3, horizon=4
    )
    assert docs["delta_per_timestep"]["delta_mask"] == R1PRO.delta_mask().tolist()
    assert np.asarray(docs["delta_per_timestep"]["norm_stats"]["actions"]["mean"]).shape == (4, 23)


def test_per_timestep_horizon_longer_than_every_episode_is_an_input_error():
    data = columns([np.zeros((3, 2)), np.zeros((2, 2))])
    with pytest.raises(InputError, match=r"horizon step 3 has no unpadded frame"):
        ns.per_timestep_stats(data, 5, bins=BINS)


def test_documents_use_openpi_layout_and_list_floors():
    rng = np.random.default_rng(5)
    eps = [rng.normal(size=(20, 23)) for _ in range(3)]
    for ep in eps:
        ep[:, 22] = -1.0  # a gripper that never opens
    docs = ns.compute_variants(
        columns(eps),
        ["standard", "balanced", "per_timestep"],
        layout=R1PRO,
        bins=BINS,
        min_std=0.01,
        horizon=4,
    )
    for variant, doc in docs.items():
        assert set(doc["norm_stats"]) == {"state", "actions"}
        for key in ("mean", "std", "q01", "q99"):
            assert len(doc["norm_stats"]["state"][key]) == 23
        assert 22 in doc["below_min_std"]["state"]
        assert doc["variant"] == variant
    assert np.shape(docs["per_timestep"]["norm_stats"]["actions"]["mean"]) == (4, 23)
    assert [3, 22] in docs["per_timestep"]["below_min_std"]["actions"]
    assert docs["standard"]["norm_stats"]["state"] == docs["balanced"]["norm_stats"]["state"]
