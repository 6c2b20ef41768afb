"""``MobileReachEnv``: the embedded mobile-manipulation task, and the closed-loop eval env.

The simulation is kinematic (no dynamics, no contacts), which keeps it fast and
bit-deterministic: each control step integrates the base velocity command
(robot frame, clipped to limits) into the base pose, moves torso and arm joints
toward their absolute position targets at a bounded rate (first-order
tracking), sets the grippers, and runs ``mj_kinematics`` for the site poses
and cameras.

Actions use the R1Pro 23-D layout (``balanced_pi0.groups.R1PRO``):
base 0:3 (vx, vy, wz in the robot frame), torso 3:7, left arm 7:14, left
gripper 14, right arm 15:22, right gripper 22. Grippers are in [-1, 1]: +1 open,
-1 closed. The state is the same 23 proprioceptive dims (for the base, the
realised velocity) followed by the target cube's position in the robot frame
(x forward, y left, z up; 3 dims) and the left and right end-effector positions
in the same frame (3 dims each), 32 dims in all. The cube's position is the object
pose that low-dimensional manipulation benchmarks (robomimic, Meta-World) give
their policies; the hand positions are part of R1Pro's proprioception in
BEHAVIOR-1K (``eef_left_pos``/``eef_right_pos``, robot frame) and of Meta-World's
observation. Without the cube's position the tiny policies of the embedded default
would have to find a 2.5 cm cube anywhere on a 4 m disc from 32 px images, which
they do not learn on two CPU cores. Adding the hand positions made no
measurable difference to the reference's success in two single-seed design runs;
they stay because R1Pro's policies observe them. With both, the problem left is
the one the project studies: turning a known goal into base and arm motion. The
pipeline's policies do not read the base's three dims (``model.state_hidden``):
they are the realised velocity, i.e. the last command, and a policy that reads them
keeps doing what it did (the "copycat" shortcut); the paper's ``base_state``
variant measures what reading them costs.

Task: a cube of a named colour is placed either within reach of the start pose
(arm-heavy) or 1.5-4 m away (base-heavy); the prompt names the colour and the
hand. Success (latched): the named hand's end-effector site within
``SUCCESS_TOLERANCE`` of the cube centre. An episode is done ``SETTLE_STEPS``
steps after the first success, or at ``max_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from balanced_pi0.errors import InputError
from balanced_pi0.sim import robot
from balanced_pi0.sim.common import check_action, render_cameras, shared_renderer

ACTION_DIM = 23
#: The 23 proprioceptive dims in action order, then the target's position in the robot frame,
#: then the left and right end-effector positions in the robot frame.
STATE_DIM = ACTION_DIM + 9
TARGET_STATE = slice(ACTION_DIM, ACTION_DIM + 3)
EE_STATE = {"left": slice(ACTION_DIM + 3, ACTION_DIM + 6), "right": slice(ACTION_DIM + 6, ACTION_DIM + 9)}
BASE, TORSO, LEFT_ARM, LEFT_GRIPPER, RIGHT_ARM, RIGHT_GRIPPER = (
    slice(0, 3),
    slice(3, 7),
    slice(7, 14),
    14,
    slice(15, 22),
    22,
)
ARM_SLICES = {"left": LEFT_ARM, "right": RIGHT_ARM}
GRIPPER_INDEX = {"left": LEFT_GRIPPER, "right": RIGHT_GRIPPER}
CAMERAS = ("head", "left_wrist", "right_wrist")

#: Base velocity limits (vx, vy m/s; wz rad/s), and joint tracking rate (rad/s).
BASE_LIMITS = np.array([0.6, 0.4, 1.2])
JOINT_RATE = 1.0
GRIPPER_RATE = 4.0
SUCCESS_TOLERANCE = 0.05
SETTLE_STEPS = 5

#: Start pose: torso upright, upper arms down, hands low in front of the base.
START_TORSO = np.zeros(4)
START_ARM = np.array([1.5, 0.0, 0.0, -2.0, 0.0, 1.2, 0.0])

#: Arm-heavy placement, spherical about the named shoulder in the robot frame
#: (distance m, azimuth and elevation rad): inside the arm's ~0.63 m reach.
ARM_HEAVY_R, ARM_HEAVY_AZ, ARM_HEAVY_EL = (0.3, 0.55), (-0.5, 0.5), (-0.7, 0.1)
MIN_ARM_TRAVEL = 0.2
#: Base-heavy placement: distance (m) from the start, and the cube's height.
BASE_HEAVY_DIST = (1.5, 4.0)
TARGET_Z = (0.6, 0.95)


@dataclass(frozen=True)
class Target:
    colour: str
    hand: str
    pos: np.ndarray  # world position of the cube centre
    arm_heavy: bool


class MobileReachEnv:
    """``reset(seed) -> obs``; ``step(action[23]) -> (obs, success, done)``.

    ``obs = {"state": float32[32], "images": {camera: uint8[H, W, 3]}, "prompt": str}``.
    ``success`` is latched: True from the first step the named hand reached the cube.
    ``target`` (colour, hand, world position, placement) is privileged, for the expert.
    """

    def __init__(
        self,
        resolution: int = 64,
        cameras: Sequence[str] = CAMERAS,
        max_steps: int = 200,
        fps: int = 10,
        arm_heavy_fraction: float = 0.5,
    ) -> None:
        unknown = sorted(set(cameras) - set(CAMERAS))
        if unknown:
            raise InputError(f"cameras: unknown {unknown}; the sim has {list(CAMERAS)}")
        if resolution < 1 or max_steps < 1 or fps < 1:
            raise InputError(
                f"resolution, max_steps, fps must be positive; got {resolution}, {max_steps}, {fps}"
            )
        self.resolution, self.cameras, self.max_steps, self.fps = resolution, tuple(cameras), max_steps, fps
        self.dt = 1.0 / fps
        self.arm_heavy_fraction = arm_heavy_fraction
        self._mjcf = robot.build_mjcf()
        self.model = mujoco.MjModel.from_xml_string(self._mjcf)
        self.data = mujoco.MjData(self.model)
        self._index_joints()
        self._renderer = None
        self.target: Target | None = None

    # --- public API -----------------------------------------------------------------
    def reset(self, seed: int, arm_heavy: bool | None = None) -> dict:
        """Start an episode; ``arm_heavy`` forces the placement (drawn from the seed otherwise)."""
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise InputError(f"reset: seed must be a non-negative int, got {seed!r}")
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        self._joint_pos = np.concatenate([START_TORSO, START_ARM, [1.0], START_ARM, [1.0]])
        self._velocity = np.zeros(3)
        self._write_joints()
        self._forward()  # shoulder poses for the placement
        draw_arm_heavy = rng.random() < self.arm_heavy_fraction
        self.target = self._place_target(rng, draw_arm_heavy if arm_heavy is None else arm_heavy)
        self.steps, self.success, self._success_step = 0, False, None
        self._forward()
        return self._observe()

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, bool, bool]:
        """``render=False``: ``obs["images"]`` is None, and ``render()`` gives them for this state."""
        if self.target is None:
            raise InputError("step() before reset()")
        action = check_action(action, ACTION_DIM, "R1Pro")
        self._move_base(action[BASE])
        self._track_joints(action)
        self._write_joints()
        self._forward()
        self.steps += 1
        if not self.success and self.ee_distance() <= SUCCESS_TOLERANCE:
            self.success, self._success_step = True, self.steps
        settled = self.success and self.steps - self._success_step >= SETTLE_STEPS
        return self._observe(render), self.success, settled or self.steps >= self.max_steps

    def render(self) -> dict[str, np.ndarray]:
        """One uint8 ``[H, W, 3]`` image per camera, of the current state."""
        if not self.cameras:
            return {}
        if self._renderer is None:
            self._renderer = shared_renderer(self._mjcf, self.model, self.resolution)
        return render_cameras(self._renderer, self.data, self.cameras)

    @property
    def arm_heavy(self) -> bool:
        """Whether this episode's cube was placed within reach of the start pose."""
        return self.target.arm_heavy

    @property
    def task(self) -> str | None:
        """The scene's kind: ``arm_heavy`` (the cube placed within reach of the start pose) or
        ``base_heavy`` (drive first). The closed-loop summary reports success per kind (``by_task``):
        arm stagnation shows where the arm alone must do the work."""
        if self.target is None:
            return None
        return "arm_heavy" if self.target.arm_heavy else "base_heavy"

    @property
    def prompt(self) -> str:
        return f"reach the {self.target.colour} cube with the {self.target.hand} hand"

    def action_noise_scale(self, fraction: float) -> np.ndarray:
        """Per-dim noise std, ``fraction`` of each dim's one-step range: the base's velocity limits,
        the joints' tracking step; none on the grippers (open/closed commands)."""
        scale = np.full(ACTION_DIM, JOINT_RATE * self.dt)
        scale[BASE] = BASE_LIMITS
        scale[[LEFT_GRIPPER, RIGHT_GRIPPER]] = 0.0
        return fraction * scale

    def ee_pos(self, hand: str) -> np.ndarray:
        return self.data.site_xpos[self._ee_site[hand]].copy()

    def ee_distance(self) -> float:
        return float(np.linalg.norm(self.ee_pos(self.target.hand) - self.target.pos))

    def progress(self) -> dict[str, float]:
        """Task progress for the failure breakdown: whether the cube is within the named arm's reach
        (shoulder-to-cube distance at most the arm's length), which arm is named (0 left, 1 right),
        and the named hand's distance to the cube."""
        shoulder = self.data.xpos[self.model.body(f"{self.target.hand}_shoulder").id]
        reach = robot.UPPER_ARM + robot.FOREARM + robot.HAND
        return {
            "in_reach": float(np.linalg.norm(self.target.pos - shoulder) <= reach),
            "hand": float(robot.SIDES.index(self.target.hand)),
            "hand_distance": self.ee_distance(),
        }

    def base_pose(self) -> np.ndarray:
        """(x, y, yaw) of the base in the world."""
        return self.data.qpos[self._base_qpos].copy()

    def close(self) -> None:
        """Lets go of the renderer; it stays with the process's other envs of this model (``shared_renderer``)."""
        self._renderer = None

    # --- internals ------------------------------------------------------------------
    def _index_joints(self) -> None:
        m = self.model
        names = list(robot.TORSO_JOINTS) + robot.arm_joint_names("left") + robot.arm_joint_names("right")
        self._torso_arm_qpos = np.array([m.joint(n).qposadr[0] for n in names])
        # Degree-of-freedom columns of each group, for Jacobian-based controllers.
        self.torso_dofs = np.array([m.joint(n).dofadr[0] for n in robot.TORSO_JOINTS])
        self.arm_dofs = {
            s: np.array([m.joint(n).dofadr[0] for n in robot.arm_joint_names(s)]) for s in robot.SIDES
        }
        self._fingers = {
            s: np.array([m.joint(n).qposadr[0] for n in robot.finger_joint_names(s)]) for s in robot.SIDES
        }
        self._base_qpos = np.array([m.joint(n).qposadr[0] for n in ("base_x", "base_y", "base_yaw")])
        self._ee_site = {s: m.site(f"{s}_ee").id for s in robot.SIDES}
        ranges = m.jnt_range[[m.joint(n).id for n in names]]
        # The layout's 18 position dims (torso + arms) and two grippers, in action order.
        lo, hi = np.full(20, -1.0), np.full(20, 1.0)
        pos_dims = np.r_[0:11, 12:19]
        lo[pos_dims], hi[pos_dims] = ranges[:, 0], ranges[:, 1]
        self._lo, self._hi = lo, hi

    def _forward(self) -> None:
        # The position stages of mj_forward that matter without dynamics: body and site
        # poses, comPos (for the expert's mj_jacSite) and camera/light poses.
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    def _place_target(self, rng: np.random.Generator, arm_heavy: bool) -> Target:
        colours = list(robot.COLOURS)
        colour = colours[rng.integers(len(colours))]
        hand = robot.SIDES[rng.integers(2)]
        if arm_heavy:
            pos = self._arm_heavy_position(rng, hand)
        else:
            dist, angle = rng.uniform(*BASE_HEAVY_DIST), rng.uniform(-math.pi, math.pi)
            pos = np.array([dist * math.cos(angle), dist * math.sin(angle), rng.uniform(*TARGET_Z)])
        self._place_cubes(rng, colour, pos)
        return Target(colour=colour, hand=hand, pos=pos, arm_heavy=arm_heavy)

    def _arm_heavy_position(self, rng: np.random.Generator, hand: str) -> np.ndarray:
        body = self.model.body(f"{hand}_shoulder")
        shoulder = self.data.xpos[body.id]
        chest = self.data.xmat[self.model.body_parentid[body.id]].reshape(3, 3)
        while True:  # rejection: a cube already at the hand would make a trivial episode
            r, az, el = (rng.uniform(*lim) for lim in (ARM_HEAVY_R, ARM_HEAVY_AZ, ARM_HEAVY_EL))
            offset = r * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
            pos = shoulder + chest @ offset
            if np.linalg.norm(pos - self.ee_pos(hand)) >= MIN_ARM_TRAVEL:
                return pos

    def _place_cubes(self, rng: np.random.Generator, colour: str, pos: np.ndarray) -> None:
        """The target, plus one distractor of another colour 0.6-1.5 m from it; the rest hidden."""
        others = [c for c in robot.COLOURS if c != colour]
        distractor = others[rng.integers(len(others))]
        angle, dist = rng.uniform(-math.pi, math.pi), rng.uniform(0.6, 1.5)
        d_pos = pos + np.array([dist * math.cos(angle), dist * math.sin(angle), 0.0])
        d_pos[2] = rng.uniform(*TARGET_Z)
        for c in robot.COLOURS:
            mocap = self.model.body(f"cube_{c}").mocapid[0]
            self.data.mocap_pos[mocap] = pos if c == colour else d_pos if c == distractor else (0, 0, -1)

    def _move_base(self, command: np.ndarray) -> None:
        v = np.clip(command, -BASE_LIMITS, BASE_LIMITS)
        x, y, yaw = self.data.qpos[self._base_qpos]
        # Midpoint heading: exact for straight lines, second-order accurate on arcs.
        mid = yaw + 0.5 * v[2] * self.dt
        c, s = math.cos(mid), math.sin(mid)
        x += (c * v[0] - s * v[1]) * self.dt
        y += (s * v[0] + c * v[1]) * self.dt
        yaw = math.remainder(yaw + v[2] * self.dt, 2 * math.pi)
        self.data.qpos[self._base_qpos] = (x, y, yaw)
        self._velocity = v

    def _track_joints(self, action: np.ndarray) -> None:
        target = np.clip(action[3:], self._lo, self._hi)
        rate = np.full(20, JOINT_RATE * self.dt)
        rate[[11, 19]] = GRIPPER_RATE * self.dt
        self._joint_pos = self._joint_pos + np.clip(target - self._joint_pos, -rate, rate)

    def _write_joints(self) -> None:
        q = self._joint_pos
        self.data.qpos[self._torso_arm_qpos] = np.r_[q[0:11], q[12:19]]
        for side, g in (("left", q[11]), ("right", q[19])):
            self.data.qpos[self._fingers[side]] = 0.5 * (g + 1.0) * robot.FINGER_TRAVEL

    def state(self) -> np.ndarray:
        hands = [self.in_robot_frame(self.ee_pos(side)) for side in robot.SIDES]
        return np.concatenate([self._velocity, self._joint_pos, self.target_in_robot_frame(), *hands]).astype(
            np.float32
        )

    def target_in_robot_frame(self) -> np.ndarray:
        """The cube centre relative to the base: (forward, left) in the base's heading, and height."""
        return self.in_robot_frame(self.target.pos)

    def in_robot_frame(self, world: np.ndarray) -> np.ndarray:
        """A world point relative to the base: (forward, left) in the base's heading, and height."""
        x, y, yaw = self.base_pose()
        dx, dy = world[0] - x, world[1] - y
        c, s = math.cos(yaw), math.sin(yaw)
        return np.array([c * dx + s * dy, -s * dx + c * dy, world[2]])

    def _observe(self, images: bool = True) -> dict:
        return {"state": self.state(), "images": self.render() if images else None, "prompt": self.prompt}
