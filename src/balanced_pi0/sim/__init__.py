"""The embedded MuJoCo mobile-manipulation task: robot (MJCF), env, scripted expert, recorder.

Rendering is offscreen; MuJoCo picks its GL backend at import time, so the
default (EGL, Mesa on the CPU here) is set before any submodule imports mujoco.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
