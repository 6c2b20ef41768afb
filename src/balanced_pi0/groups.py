"""Action-group layouts: which action dimensions belong to which body part.

One layout object is shared by the loss, the statistics, the filtering and the
evaluation, so "the arms" mean the same dimensions everywhere.

The R1Pro preset follows BEHAVIOR-1K's *action* order (``ACTION_QPOS_INDICES``):
base 0:3 (vx, vy, wz velocity), torso 3:7, left arm 7:14, left gripper 14,
right arm 15:22, right gripper 22. The proprio-*state* order differs (there the
right arm is 14:21); using it for actions is a common mistake.

A layout may also say which dimensions are trained as *delta actions* (openpi's
``DeltaActions``: ``a − state_t`` for every step of a chunk, ``state_t`` the
state at the chunk's first step). The R1Pro preset carries the mask of the
BEHAVIOR Challenge 2025 winner (arXiv 2512.06951), openpi's
``make_bool_mask(-3, 3, -1, 7, -1, 7, -1)``: base velocity absolute, torso dims
3:6 delta, torso dim 6 absolute, both arms delta, grippers absolute.

Every group says what it is (``role``): evaluation, statistics and motion read the
role, never the name, so a layout may name its groups as its dataset does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from balanced_pi0.errors import InputError

#: Width every model pads actions and state to; padded dims never carry loss.
MODEL_ACTION_DIM = 32


#: What a group of dims is. ``base_velocity``: (vx, vy, wz) velocity commands of a mobile base
#: (motion is distance travelled, holding still is a zero command); ``torso``, ``arm``, ``gripper``:
#: joint positions (motion is joint-space path length, grippers are scored on open/close events);
#: ``other``: joint positions that no role-specific metric reads.
ROLES = ("base_velocity", "torso", "arm", "gripper", "other")


class LayoutError(InputError):
    """A layout or a weight specification that does not describe the action space."""


@dataclass(frozen=True)
class Group:
    name: str
    start: int
    stop: int  # exclusive
    #: one of ``ROLES``
    role: str
    #: the action is a command (a velocity, an end-effector delta, a grip effort): holding still is
    #: a zero action. Otherwise it is a target position and holding still repeats the current state.
    #: A ``base_velocity`` group is always a command.
    command: bool = False

    @property
    def holds_at_zero(self) -> bool:
        return self.command or self.role == "base_velocity"

    @property
    def indices(self) -> range:
        return range(self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class GroupLayout:
    """Named, contiguous, non-overlapping groups that tile ``[0, real_action_dim)``."""

    name: str
    groups: tuple[Group, ...]
    real_action_dim: int
    model_action_dim: int = MODEL_ACTION_DIM
    #: openpi ``make_bool_mask`` run lengths of the delta-action dims (None: the layout has none)
    delta_mask_spec: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def delta_mask(self) -> np.ndarray:
        """bool [real_action_dim]: True on the dims trained as deltas from the chunk's first state."""
        if self.delta_mask_spec is None:
            raise LayoutError(
                f"layout {self.name!r} defines no delta-action mask (layout.delta_mask), so "
                "train.delta_actions cannot be used with it"
            )
        return make_bool_mask(*self.delta_mask_spec)

    # --- lookups -------------------------------------------------------------------
    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise LayoutError(f"layout {self.name!r} has no group {name!r}; groups are {list(self.group_names)}")

    def with_role(self, role: str) -> tuple[Group, ...]:
        """The groups of ``role``, in layout order (for R1Pro's arms: left, then right)."""
        if role not in ROLES:
            raise LayoutError(f"unknown group role {role!r}; roles are {list(ROLES)}")
        return tuple(g for g in self.groups if g.role == role)

    def names_with_role(self, role: str) -> tuple[str, ...]:
        return tuple(g.name for g in self.with_role(role))

    def group_of_dim(self) -> np.ndarray:
        """int array [real_action_dim]: index into ``groups`` of each real dimension."""
        out = np.empty(self.real_action_dim, dtype=np.int64)
        for i, g in enumerate(self.groups):
            out[g.start : g.stop] = i
        return out

    # --- masks and weights shared by loss, statistics and evaluation ---------------
    def group_masks(self, width: int | None = None) -> np.ndarray:
        """bool [num_groups, width]: row g is True on group g's dimensions.

        ``width`` defaults to ``model_action_dim``; padded dims are False in every row.
        """
        width = self.model_action_dim if width is None else width
        if width < self.real_action_dim:
            raise LayoutError(f"width {width} is smaller than real_action_dim {self.real_action_dim}")
        masks = np.zeros((len(self.groups), width), dtype=bool)
        for i, g in enumerate(self.groups):
            masks[i, g.start : g.stop] = True
        return masks

    def real_dim_mask(self, width: int | None = None) -> np.ndarray:
        """bool [width]: True on the real action dimensions."""
        width = self.model_action_dim if width is None else width
        mask = np.zeros(width, dtype=bool)
        mask[: self.real_action_dim] = True
        return mask

    def validate_group_weights(self, group_weights: Mapping[str, float], *, field: str = "group_weights"):
        unknown = sorted(set(group_weights) - set(self.group_names))
        if unknown:
            raise LayoutError(
                f"{field}: unknown group(s) {unknown} for layout {self.name!r}; groups are {list(self.group_names)}"
            )
        for name, w in group_weights.items():
            _check_weight(w, f"{field}.{name}")

    def weight_vector(
        self,
        group_weights: Mapping[str, float] | None = None,
        dimension_weights: Sequence[float] | None = None,
        *,
        width: int | None = None,
        field: str = "group_weights",
    ) -> np.ndarray:
        """float64 [width] raw per-dimension weights, zero on padded dims.

        ``group_weights`` maps group names to weights (groups not named weigh 1.0);
        ``dimension_weights`` is an explicit vector of ``real_action_dim`` weights.
        They multiply when both are given. No renormalisation happens here: the
        loss renormalises over the elements that are actually valid.
        """
        width = self.model_action_dim if width is None else width
        w = np.zeros(width, dtype=np.float64)
        w[: self.real_action_dim] = 1.0
        if group_weights:
            self.validate_group_weights(group_weights, field=field)
            for g in self.groups:
                w[g.start : g.stop] *= float(group_weights.get(g.name, 1.0))
        if dimension_weights is not None:
            dims = list(dimension_weights)
            if len(dims) != self.real_action_dim:
                raise LayoutError(
                    f"dimension_weights: expected {self.real_action_dim} weights (real_action_dim of layout "
                    f"{self.name!r}), got {len(dims)}"
                )
            for i, v in enumerate(dims):
                _check_weight(v, f"dimension_weights[{i}]")
            w[: self.real_action_dim] *= np.asarray(dims, dtype=np.float64)
        return w

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "real_action_dim": self.real_action_dim,
            "model_action_dim": self.model_action_dim,
            "groups": {g.name: [g.start, g.stop] for g in self.groups},
            "roles": {g.name: g.role for g in self.groups},
            "delta_mask": None if self.delta_mask_spec is None else list(self.delta_mask_spec),
        }


def to_delta_actions(actions: np.ndarray, state: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``actions [..., (H,) D] − state [..., Ds]`` on the ``mask`` dims (state broadcast over H)."""
    return _shift_masked(actions, state, mask, -1.0)


def from_delta_actions(actions: np.ndarray, state: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Inverse of ``to_delta_actions``: the state added back on the ``mask`` dims."""
    return _shift_masked(actions, state, mask, 1.0)


def _shift_masked(actions: np.ndarray, state: np.ndarray, mask: np.ndarray, sign: float) -> np.ndarray:
    actions, state = np.asarray(actions), np.asarray(state)
    width = actions.shape[-1]
    if mask.shape != (width,) or state.shape[-1] < width:
        raise LayoutError(
            f"delta actions: actions have {width} dims, the delta mask {mask.shape[0]} and the state "
            f"{state.shape[-1]}; the state must start with the action layout's dims"
        )
    s = state[..., :width]
    if actions.ndim == state.ndim + 1:  # a chunk: the chunk's first state for every step
        s = s[..., None, :]
    return (actions + sign * np.where(mask, s, 0.0)).astype(actions.dtype)


def make_bool_mask(*dims: int) -> np.ndarray:
    """openpi's mask builder: ``make_bool_mask(2, -2, 2) == [T, T, F, F, T, T]``."""
    out: list[bool] = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d == 0:
            raise LayoutError(f"delta mask: run lengths must be non-zero ints, got {d!r}")
        out.extend([d > 0] * abs(d))
    return np.asarray(out, dtype=bool)


def _check_weight(w: object, field: str) -> None:
    if isinstance(w, bool) or not isinstance(w, int | float | np.floating | np.integer):
        raise LayoutError(f"{field}: expected a number, got {w!r}")
    if not math.isfinite(float(w)) or float(w) <= 0:
        raise LayoutError(f"{field}: weights must be finite and > 0, got {w!r}")


def _validate(layout: GroupLayout) -> None:
    d = layout.real_action_dim
    if not isinstance(d, int) or d <= 0:
        raise LayoutError(f"layout {layout.name!r}: real_action_dim must be a positive int, got {d!r}")
    if layout.model_action_dim < d:
        raise LayoutError(
            f"layout {layout.name!r}: model_action_dim {layout.model_action_dim} < real_action_dim {d}"
        )
    if not layout.groups:
        raise LayoutError(f"layout {layout.name!r}: no groups")
    owner: dict[int, str] = {}
    names: set[str] = set()
    for g in layout.groups:
        if g.name in names:
            raise LayoutError(f"layout {layout.name!r}: group {g.name!r} is defined twice")
        names.add(g.name)
        if g.role not in ROLES:
            raise LayoutError(
                f"layout {layout.name!r}: group {g.name!r} has role {g.role!r}; roles are {list(ROLES)}"
            )
        if g.stop <= g.start:
            raise LayoutError(f"layout {layout.name!r}: group {g.name!r} [{g.start}, {g.stop}) is empty")
        if g.start < 0 or g.stop > d:
            raise LayoutError(
                f"layout {layout.name!r}: group {g.name!r} [{g.start}, {g.stop}) lies outside "
                f"[0, real_action_dim={d})"
            )
        for i in g.indices:
            if i in owner:
                raise LayoutError(
                    f"layout {layout.name!r}: groups {owner[i]!r} and {g.name!r} overlap at dimension {i}"
                )
            owner[i] = g.name
    missing = [i for i in range(d) if i not in owner]
    if missing:
        raise LayoutError(f"layout {layout.name!r}: dimensions {missing} belong to no group")
    if layout.delta_mask_spec is not None:
        width = len(make_bool_mask(*layout.delta_mask_spec))
        if width != d:
            raise LayoutError(
                f"layout {layout.name!r}: delta_mask {list(layout.delta_mask_spec)} covers {width} dims, "
                f"real_action_dim is {d}"
            )


def layout_from_mapping(
    name: str,
    groups: Mapping[str, Sequence[int]],
    real_action_dim: int,
    model_action_dim: int = MODEL_ACTION_DIM,
    delta_mask: Sequence[int] | None = None,
    *,
    roles: Mapping[str, str],
) -> GroupLayout:
    """Build a layout from ``{group: [start, stop)}`` and ``{group: role}`` as written in params.yaml."""
    unknown = sorted(set(roles) - set(groups))
    if unknown:
        raise LayoutError(f"layout {name!r}: roles given for groups {unknown} that the layout does not have")
    parsed = []
    for gname, span in groups.items():
        if (
            not isinstance(span, Sequence)
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            raise LayoutError(f"layout {name!r}: group {gname!r} must be [start, stop) ints, got {span!r}")
        if gname not in roles:
            raise LayoutError(
                f"layout {name!r}: group {gname!r} has no role (layout.roles.{gname}: one of {list(ROLES)})"
            )
        parsed.append(Group(str(gname), int(span[0]), int(span[1]), str(roles[gname])))
    return GroupLayout(
        name=name,
        groups=tuple(parsed),
        real_action_dim=real_action_dim,
        model_action_dim=model_action_dim,
        delta_mask_spec=None if delta_mask is None else tuple(delta_mask),
    )


R1PRO = GroupLayout(
    name="r1pro",
    groups=(
        Group("base", 0, 3, "base_velocity"),
        Group("torso", 3, 7, "torso"),
        Group("left_arm", 7, 14, "arm"),
        Group("left_gripper", 14, 15, "gripper"),
        Group("right_arm", 15, 22, "arm"),
        Group("right_gripper", 22, 23, "gripper"),
    ),
    real_action_dim=23,
    delta_mask_spec=(-3, 3, -1, 7, -1, 7, -1),
)

#: Meta-World's Sawyer (one arm, end-effector control): an xyz delta of the end effector (1 = 1 cm
#: per step, clipped to [-1, 1]) and a grip effort in [-1, 1] (+1 closes). Both are commands, not
#: positions, so holding still is a zero action.
METAWORLD = GroupLayout(
    name="metaworld",
    groups=(Group("arm", 0, 3, "arm", command=True), Group("gripper", 3, 4, "gripper", command=True)),
    real_action_dim=4,
)

PRESETS: dict[str, GroupLayout] = {"r1pro": R1PRO, "metaworld": METAWORLD}


def get_layout(spec: str | GroupLayout) -> GroupLayout:
    """A preset by name, or a layout object passed through."""
    if isinstance(spec, GroupLayout):
        return spec
    try:
        return PRESETS[spec]
    except KeyError:
        raise LayoutError(f"unknown layout preset {spec!r}; presets are {sorted(PRESETS)}") from None
