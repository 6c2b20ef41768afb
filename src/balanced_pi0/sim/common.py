"""What both expert envs (the embedded ``MobileReachEnv`` and ``MetaWorldEnv``) do alike: check an
action and render their cameras offscreen."""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np

from balanced_pi0.errors import InputError


def check_action(action, dim: int, layout: str) -> np.ndarray:
    """``action`` as float64 ``[dim]``; an ``InputError`` naming the shape or the first non-finite dim."""
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"action: not a numeric array ({e})") from None
    if a.shape != (dim,):
        raise InputError(f"action: expected shape [{dim}] ({layout} layout), got {list(a.shape)}")
    bad = np.flatnonzero(~np.isfinite(a))
    if len(bad):
        raise InputError(f"action: non-finite value at dim {int(bad[0])}")
    return a


def make_renderer(model: mujoco.MjModel, resolution: int) -> mujoco.Renderer:
    """A square offscreen renderer. Shadows and reflections make CPU (Mesa) rendering ~50x slower
    and add nothing to a 32 px policy input."""
    renderer = mujoco.Renderer(model, resolution, resolution)
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return renderer


_SHARED: dict[tuple[str, int], mujoco.Renderer] = {}


def shared_renderer(mjcf: str, model: mujoco.MjModel, resolution: int) -> mujoco.Renderer:
    """The process's one renderer for every env built from ``mjcf`` at ``resolution``.

    Closed-loop eval steps many envs in lockstep (``eval.parallel_envs``). With a renderer (a GL
    context) each, making the contexts and switching between them cost more than the 32 px images
    themselves: sharing one made a 90-scene eval of the embedded task 2.1x faster with the same
    bytes out (``benchmarks/sim.py`` measures the lockstep case). Only for envs whose model never
    changes once built: the renderer draws ``update_scene``'s data with the model it was made
    from, so a second model from the same MJCF must be the same model (``MobileReachEnv`` moves its
    cubes through mocap data). Meta-World has a model per task and some tasks write into theirs
    (lever-pull moves a body), so its envs keep their own renderers.
    """
    key = (mjcf, resolution)
    if key not in _SHARED:
        _SHARED[key] = make_renderer(model, resolution)
    return _SHARED[key]


def render_cameras(
    renderer: mujoco.Renderer, data: mujoco.MjData, cameras: Sequence[str], flipped: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """One uint8 ``[H, W, 3]`` image per camera; those in ``flipped`` turned by 180°."""
    images = {}
    for cam in cameras:
        renderer.update_scene(data, camera=cam)
        img = renderer.render()
        images[cam] = np.ascontiguousarray(img[::-1, ::-1]) if cam in flipped else img
    return images
