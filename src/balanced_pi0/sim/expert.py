"""``ScriptedExpert``: drive to a pre-reach pose, then reach with damped-least-squares IK.

The expert is privileged: it reads the target pose the env drew at reset and
the env's MuJoCo model/data for the hand Jacobian (``mj_jacSite``). Phases:

1. drive: a proportional controller on the base pose (robot-frame velocity,
   clipped to the env's limits) toward the pose that puts the cube in front of
   the named shoulder, facing it; skipped when the cube is already in reach;
2. reach: damped-least-squares IK on the named arm's 7 joints, one bounded
   step per control step, as absolute joint-position targets, with the torso
   joints taking a smaller share; the gripper closes as the hand arrives. The
   other arm holds its pose.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from balanced_pi0.sim import env as _env
from balanced_pi0.sim import robot

#: Where the cube should sit relative to the named shoulder, robot frame (m).
PRE_REACH_X = 0.35
#: Base pose accepted as reached: position (m) and heading (rad).
POS_TOL, YAW_TOL = 0.04, 0.05
#: Proportional gains (1/s) of the base controller.
K_POS, K_YAW = 1.5, 2.5
#: IK damping (m) and the largest joint step one control step may ask for (rad).
DAMPING = 0.05
MAX_JOINT_STEP = 0.07
#: Share of the reach the torso joints take, relative to the arm joints (DLS weight).
TORSO_WEIGHT = 0.3
CLOSE_DISTANCE = 0.08


class ScriptedExpert:
    def reset(self, env: _env.MobileReachEnv) -> None:
        self.env = env
        self.target = env.target
        self._driving = not self._in_reach()
        self._jac = np.zeros((3, env.model.nv))

    def act(self, obs: dict) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)[: _env.ACTION_DIM]
        action = state.copy()
        action[_env.BASE] = 0.0
        if self._driving:
            action[_env.BASE] = self._drive()
            self._driving = np.any(action[_env.BASE] != 0.0)
        if not self._driving:
            side = self.target.hand
            dq = self._ik_step(side)
            action[_env.TORSO] = state[_env.TORSO] + dq[:4]
            action[_env.ARM_SLICES[side]] = state[_env.ARM_SLICES[side]] + dq[4:]
            near = self.env.ee_distance() < CLOSE_DISTANCE
            action[_env.GRIPPER_INDEX[side]] = -1.0 if near else 1.0
        return action.astype(np.float32)

    def _pre_reach_pose(self) -> np.ndarray:
        """Base (x, y, yaw) that faces the cube with it ``PRE_REACH_X`` ahead of the named shoulder."""
        x, y, _ = self.env.base_pose()
        to_cube = self.target.pos[:2] - (x, y)
        shoulder_y = robot.SHOULDER_Y if self.target.hand == "left" else -robot.SHOULDER_Y
        # Heading such that the cube lies at (PRE_REACH_X, shoulder_y) in the robot frame.
        yaw = math.atan2(to_cube[1], to_cube[0]) - math.atan2(shoulder_y, PRE_REACH_X)
        c, s = math.cos(yaw), math.sin(yaw)
        offset = np.array([c * PRE_REACH_X - s * shoulder_y, s * PRE_REACH_X + c * shoulder_y])
        return np.array([*(self.target.pos[:2] - offset), yaw])

    def _drive(self) -> np.ndarray:
        x, y, yaw = self.env.base_pose()
        goal = self._pre_reach_pose()
        err_world = goal[:2] - (x, y)
        dist = float(np.linalg.norm(err_world))
        # Far away: face the direction of travel, so the head camera sees where it goes.
        heading = math.atan2(err_world[1], err_world[0]) if dist > 0.5 else goal[2]
        err_yaw = math.remainder(heading - yaw, 2 * math.pi)
        if dist < POS_TOL and abs(math.remainder(goal[2] - yaw, 2 * math.pi)) < YAW_TOL:
            return np.zeros(3)
        c, s = math.cos(yaw), math.sin(yaw)
        err_robot = np.array([c * err_world[0] + s * err_world[1], -s * err_world[0] + c * err_world[1]])
        # Turn before driving fast: translation slows while the heading error is large.
        v = K_POS * err_robot * max(0.0, math.cos(err_yaw)) ** 2 if dist > 0.5 else K_POS * err_robot
        cmd = np.array([v[0], v[1], K_YAW * err_yaw])
        return np.clip(cmd, -_env.BASE_LIMITS, _env.BASE_LIMITS)

    def _in_reach(self) -> bool:
        """Whether the cube lies in the arm-heavy placement region of the named shoulder."""
        m, d = self.env.model, self.env.data
        shoulder = m.body(f"{self.target.hand}_shoulder").id
        # The shoulder body turns with its own joints; measure in the chest frame it hangs from.
        chest = m.body_parentid[shoulder]
        local = d.xmat[chest].reshape(3, 3).T @ (self.target.pos - d.xpos[shoulder])
        r = float(np.linalg.norm(local))
        az, el = math.atan2(local[1], local[0]), math.asin(local[2] / r)
        bounds = zip((r, az, el), (_env.ARM_HEAVY_R, _env.ARM_HEAVY_AZ, _env.ARM_HEAVY_EL), strict=True)
        return all(lo - 1e-9 <= v <= hi + 1e-9 for v, (lo, hi) in bounds)

    def _ik_step(self, side: str) -> np.ndarray:
        m, d = self.env.model, self.env.data
        site = m.site(f"{side}_ee").id
        mujoco.mj_jacSite(m, d, self._jac, None, site)
        jac = self._jac[:, np.r_[self.env.torso_dofs, self.env.arm_dofs[side]]]
        err = self.target.pos - d.site_xpos[site]
        # Weighted DLS: dq = W J^T (J W J^T + lambda^2 I)^-1 e, the torso helping less than the arm.
        w = np.r_[np.full(4, TORSO_WEIGHT), np.ones(7)]
        dq = w * (jac.T @ np.linalg.solve((jac * w) @ jac.T + DAMPING**2 * np.eye(3), err))
        biggest = np.max(np.abs(dq))
        return dq * (MAX_JOINT_STEP / biggest) if biggest > MAX_JOINT_STEP else dq
