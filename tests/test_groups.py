"""The action-group layout: the R1Pro preset and validation of custom layouts."""

import numpy as np
import pytest

from balanced_pi0 import groups
from balanced_pi0.groups import Group, GroupLayout, LayoutError, layout_from_mapping


def test_r1pro_is_the_behavior1k_action_order():
    spans = {g.name: (g.start, g.stop) for g in groups.R1PRO.groups}
    assert spans == {
        "base": (0, 3),
        "torso": (3, 7),
        "left_arm": (7, 14),
        "left_gripper": (14, 15),
        "right_arm": (15, 22),
        "right_gripper": (22, 23),
    }
    assert groups.R1PRO.real_action_dim == 23
    assert groups.R1PRO.model_action_dim == groups.MODEL_ACTION_DIM == 32
    # The common mistake (state order) puts the right arm at 14:21; the action order does not.
    assert groups.R1PRO.group("right_arm").indices != range(14, 21)


def test_get_layout_by_name_and_unknown_preset():
    assert groups.get_layout("r1pro") is groups.R1PRO
    with pytest.raises(LayoutError, match="unknown layout preset 'r2d2'"):
        groups.get_layout("r2d2")


def test_group_masks_tile_the_real_dims_and_leave_padding_false():
    masks = groups.R1PRO.group_masks()
    assert masks.shape == (6, 32)
    assert (masks.sum(axis=0)[:23] == 1).all()
    assert not masks[:, 23:].any()
    assert groups.R1PRO.real_dim_mask().sum() == 23
    np.testing.assert_array_equal(groups.R1PRO.group_of_dim()[[0, 3, 7, 14, 15, 22]], [0, 1, 2, 3, 4, 5])


def test_weight_vector_groups_dims_and_padding():
    w = groups.R1PRO.weight_vector({"left_arm": 3.0, "right_arm": 3.0})
    assert w.shape == (32,)
    assert (w[7:14] == 3).all() and (w[15:22] == 3).all()
    assert (w[[0, 1, 2, 3, 6, 14, 22]] == 1).all()
    assert (w[23:] == 0).all()
    dims = np.arange(1, 24, dtype=float)
    w2 = groups.R1PRO.weight_vector({"base": 2.0}, dims)
    np.testing.assert_array_equal(w2[:3], 2 * dims[:3])
    np.testing.assert_array_equal(w2[3:23], dims[3:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_weights": {"arms": 2.0}}, r"group_weights: unknown group\(s\) \['arms'\]"),
        ({"group_weights": {"base": -1.0}}, r"group_weights.base: weights must be finite and > 0"),
        ({"group_weights": {"base": 0.0}}, r"group_weights.base: weights must be finite and > 0"),
        ({"group_weights": {"base": float("nan")}}, r"group_weights.base: weights must be finite"),
        ({"group_weights": {"base": "x"}}, r"group_weights.base: expected a number"),
        ({"dimension_weights": [1.0] * 22}, r"dimension_weights: expected 23 weights .* got 22"),
        (
            {"dimension_weights": [1.0] * 22 + [float("inf")]},
            r"dimension_weights\[22\]: weights must be finite",
        ),
    ],
)
def test_bad_weights_name_the_field(kwargs, message):
    with pytest.raises(LayoutError, match=message):
        groups.R1PRO.weight_vector(**kwargs)


@pytest.mark.parametrize(
    ("spans", "dim", "message"),
    [
        ({"a": (0, 2), "b": (1, 3)}, 3, r"groups 'a' and 'b' overlap at dimension 1"),
        ({"a": (0, 2)}, 3, r"dimensions \[2\] belong to no group"),
        ({"a": (0, 2), "b": (2, 4)}, 3, r"group 'b' \[2, 4\) lies outside \[0, real_action_dim=3\)"),
        ({"a": (-1, 3)}, 3, r"group 'a' \[-1, 3\) lies outside"),
        ({"a": (0, 3), "b": (3, 3)}, 3, r"group 'b' \[3, 3\) is empty"),
    ],
)
def test_invalid_layouts_name_group_and_indices(spans, dim, message):
    with pytest.raises(LayoutError, match=message):
        GroupLayout(
            "custom", tuple(Group(n, a, b, "arm") for n, (a, b) in spans.items()), real_action_dim=dim
        )


def test_duplicate_group_names_and_bad_spans():
    with pytest.raises(LayoutError, match="group 'a' is defined twice"):
        GroupLayout("custom", (Group("a", 0, 1, "arm"), Group("a", 1, 2, "arm")), real_action_dim=2)
    with pytest.raises(LayoutError, match=r"group 'a' must be \[start, stop\) ints"):
        groups.layout_from_mapping("custom", {"a": [0, 1, 2]}, 3, roles={"a": "arm"})
    with pytest.raises(LayoutError, match="model_action_dim 8 < real_action_dim 10"):
        GroupLayout("custom", (Group("a", 0, 10, "arm"),), real_action_dim=10, model_action_dim=8)


def test_layout_from_mapping_round_trip():
    d = groups.R1PRO.to_dict()
    layout = groups.layout_from_mapping("custom", d["groups"], 23, roles=d["roles"])
    assert layout.groups == groups.R1PRO.groups


def test_r1pro_groups_say_what_they_are():
    r = groups.R1PRO
    assert r.names_with_role("base_velocity") == ("base",)
    assert r.names_with_role("torso") == ("torso",)
    assert r.names_with_role("arm") == ("left_arm", "right_arm")
    assert r.names_with_role("gripper") == ("left_gripper", "right_gripper")


def test_roles_are_validated_naming_the_group():
    with pytest.raises(LayoutError, match=r"group 'b' has role 'wheel'; roles are"):
        GroupLayout("custom", (Group("a", 0, 1, "arm"), Group("b", 1, 2, "wheel")), real_action_dim=2)
    with pytest.raises(LayoutError, match=r"group 'b' has no role"):
        layout_from_mapping("custom", {"a": [0, 1], "b": [1, 2]}, 2, roles={"a": "arm"})
    with pytest.raises(LayoutError, match="unknown group role 'wheel'"):
        groups.R1PRO.with_role("wheel")


def test_make_bool_mask_follows_openpi():
    from balanced_pi0.groups import make_bool_mask

    assert make_bool_mask(2, -2, 2).tolist() == [True, True, False, False, True, True]
    with pytest.raises(LayoutError, match="non-zero ints"):
        make_bool_mask(2, 0)


def test_a_delta_mask_must_cover_the_layout():
    with pytest.raises(LayoutError, match="covers 4 dims, real_action_dim is 3"):
        layout_from_mapping("x", {"a": [0, 3]}, 3, delta_mask=[2, -2], roles={"a": "arm"})
    assert layout_from_mapping(
        "x", {"a": [0, 3]}, 3, delta_mask=[-1, 2], roles={"a": "arm"}
    ).delta_mask().tolist() == [
        False,
        True,
        True,
    ]
    with pytest.raises(LayoutError, match="defines no delta-action mask"):
        layout_from_mapping("x", {"a": [0, 3]}, 3, roles={"a": "arm"}).delta_mask()


def test_metaworld_preset_is_an_end_effector_delta_and_a_gripper():
    from balanced_pi0.groups import METAWORLD, R1PRO, get_layout

    layout = get_layout("metaworld")
    assert layout is METAWORLD and layout.real_action_dim == 4
    assert layout.to_dict()["groups"] == {"arm": [0, 3], "gripper": [3, 4]}
    assert layout.names_with_role("arm") == ("arm",)
    assert R1PRO.names_with_role("arm") == ("left_arm", "right_arm")
    # commands hold still at zero; R1Pro's joint targets hold the current state, its base velocity zero
    assert all(g.holds_at_zero for g in layout.groups)
    assert [g.name for g in R1PRO.groups if g.holds_at_zero] == ["base"]
