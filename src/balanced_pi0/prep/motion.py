"""How much each action group moves: one definition shared by analyze and filter.

Joint-position groups (arms, torso, grippers) move along a path in joint space, so
their motion is the summed length of per-step changes ``Σ_t ‖a[t+1,g] − a[t,g]‖``.
The base is commanded in *velocity* (vx, vy, wz), so the change of its command is
not motion: the base's motion is the distance travelled ``Σ_t ‖(vx, vy)[t]‖ · dt``
(each command is held for one frame, ``dt = 1/fps``), and the rotation
``Σ_t |wz[t]| · dt`` is reported beside it, not added (metres and radians).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from balanced_pi0.groups import GroupLayout, LayoutError


@dataclass(frozen=True)
class EpisodeMotion:
    """Motion of one episode. ``path_length`` maps every group to its joint-space path length."""

    episode: int
    num_frames: int
    path_length: dict[str, float]
    base_distance: float  # metres, Σ ‖v_xy‖·dt
    base_yaw: float  # radians, Σ |wz|·dt
    arm_motion: float  # Σ of the arm groups' path lengths (radians of joint travel)

    def arm_base_ratio(self, min_base_motion: float) -> float:
        """Arm motion per metre of base travel; the denominator is floored so a still base stays finite."""
        return self.arm_motion / max(self.base_distance, min_base_motion)


def check_layout_width(layout: GroupLayout, action_dim: int, *, source: str = "action") -> None:
    """The layout's groups must tile exactly the data's action dimensions."""
    if layout.real_action_dim != action_dim:
        raise LayoutError(
            f"layout {layout.name!r} has real_action_dim {layout.real_action_dim} but {source} has "
            f"{action_dim} dims"
        )


def check_motion_layout(layout: GroupLayout, action_dim: int, *, source: str = "action") -> None:
    """The layout must tile the data's action and have a 3-D (vx, vy, wz) base and arm groups (by role)."""
    check_layout_width(layout, action_dim, source=source)
    for role in ("base_velocity", "arm"):
        if not layout.with_role(role):
            raise LayoutError(
                f"layout {layout.name!r}: no group of role {role!r}; motion needs a base and arms "
                f"(roles: {dict((g.name, g.role) for g in layout.groups)})"
            )
    for g in layout.with_role("base_velocity"):
        if g.size != 3:
            raise LayoutError(
                f"layout {layout.name!r}: group {g.name!r} of role 'base_velocity' must be (vx, vy, wz), "
                f"3 dims, got {g.size}"
            )


def step_changes(action: np.ndarray, start: int, stop: int) -> np.ndarray:
    """float64 [T-1]: ``‖a[t+1, start:stop] − a[t, start:stop]‖₂`` within one episode."""
    group = np.asarray(action[:, start:stop], dtype=np.float64)
    return np.linalg.norm(np.diff(group, axis=0), axis=1)


def base_travel(action: np.ndarray, start: int, fps: float) -> tuple[float, float]:
    """(distance in m, rotation in rad) of one episode's base velocity commands."""
    v = np.asarray(action[:, start : start + 3], dtype=np.float64)
    dt = 1.0 / fps
    return float(np.linalg.norm(v[:, :2], axis=1).sum() * dt), float(np.abs(v[:, 2]).sum() * dt)


def episode_motion(episode: int, action: np.ndarray, layout: GroupLayout, fps: float) -> EpisodeMotion:
    """Motion of every group in one episode's ``action [T, D]``."""
    path = {g.name: float(step_changes(action, g.start, g.stop).sum()) for g in layout.groups}
    distance, yaw = 0.0, 0.0
    for g in layout.with_role("base_velocity"):
        d, y = base_travel(action, g.start, fps)
        distance, yaw = distance + d, yaw + y
    return EpisodeMotion(
        episode=int(episode),
        num_frames=int(action.shape[0]),
        path_length=path,
        base_distance=distance,
        base_yaw=yaw,
        arm_motion=float(sum(path[g.name] for g in layout.with_role("arm"))),
    )


def dataset_motion(data, layout: GroupLayout, action: np.ndarray | None = None) -> list[EpisodeMotion]:
    """``episode_motion`` of every episode of a ``LowDim`` (``episodes``, ``ep_start/stop``, ``fps``).

    ``action`` replaces ``data.action`` (same rows), e.g. actions divided by their std.
    """
    action = data.action if action is None else action
    check_motion_layout(layout, action.shape[1])
    spans = zip(data.episodes, data.ep_start, data.ep_stop, strict=True)
    bar = tqdm(spans, total=len(data.episodes), desc="motion", unit="episode", disable=None, leave=False)
    return [episode_motion(ep, action[s:e], layout, data.fps) for ep, s, e in bar]
