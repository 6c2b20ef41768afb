"""The embedded robot and scene as MJCF, built in code from primitives (no asset files).

A planar mobile base (slide x, slide y, hinge yaw), a 4-joint torso (three
pitch joints and a yaw), two 7-DoF arms (shoulder pitch/abduction/twist,
elbow, wrist twist/pitch/roll; reach ~0.63 m from the shoulder), a two-finger
gripper per hand, an end-effector site per hand, and coloured cubes as mocap
bodies that never collide (the simulation is kinematic). Cameras: ``head`` on
the torso looking forward and down, ``left_wrist``/``right_wrist`` on the hands.
"""

from __future__ import annotations

import math

#: Cube colours the prompt can name (one cube per colour in the scene).
COLOURS: dict[str, str] = {
    "red": "0.85 0.15 0.15 1",
    "green": "0.15 0.7 0.2 1",
    "blue": "0.15 0.3 0.85 1",
    "yellow": "0.9 0.8 0.1 1",
}
SIDES = ("left", "right")
TORSO_JOINTS = ("torso_1", "torso_2", "torso_3", "torso_4")
ARM_JOINTS = (
    "shoulder_pitch",
    "shoulder_abduct",
    "shoulder_twist",
    "elbow",
    "wrist_twist",
    "wrist_pitch",
    "wrist_roll",
)
#: Link lengths (m): shoulder height follows from the torso, reach from the arm.
UPPER_ARM, FOREARM, HAND = 0.30, 0.25, 0.08
SHOULDER_Y = 0.24
CUBE_HALF = 0.025
FINGER_TRAVEL = 0.03  # opening of each finger at gripper = +1 (open)


def arm_joint_names(side: str) -> list[str]:
    return [f"{side}_{j}" for j in ARM_JOINTS]


def finger_joint_names(side: str) -> list[str]:
    return [f"{side}_finger_a", f"{side}_finger_b"]


def _look_axes(tilt: float) -> str:
    """Camera ``xyaxes`` that look along the body's +x, pitched ``tilt`` rad down.

    MuJoCo cameras look along their -z with +y up; image right is the body's -y.
    """
    s, c = math.sin(tilt), math.cos(tilt)
    return f"0 -1 0 {s:.4f} 0 {c:.4f}"


def _arm(side: str) -> str:
    y = SHOULDER_Y if side == "left" else -SHOULDER_Y
    p = side
    return f"""
      <body name="{p}_shoulder" pos="0 {y} 0.15">
        <joint name="{p}_shoulder_pitch" axis="0 1 0" range="-2.6 2.6"/>
        <joint name="{p}_shoulder_abduct" axis="0 0 1" range="-1.6 1.6"/>
        <geom type="sphere" size="0.05" rgba="0.3 0.3 0.35 1"/>
        <body name="{p}_upper_arm">
          <joint name="{p}_shoulder_twist" axis="1 0 0" range="-2.6 2.6"/>
          <geom type="capsule" fromto="0 0 0 {UPPER_ARM} 0 0" size="0.035" rgba="0.75 0.75 0.78 1"/>
          <body name="{p}_forearm" pos="{UPPER_ARM} 0 0">
            <joint name="{p}_elbow" axis="0 1 0" range="-2.8 0.3"/>
            <geom type="capsule" fromto="0 0 0 {FOREARM} 0 0" size="0.03" rgba="0.75 0.75 0.78 1"/>
            <body name="{p}_wrist" pos="{FOREARM} 0 0">
              <joint name="{p}_wrist_twist" axis="1 0 0" range="-2.6 2.6"/>
              <joint name="{p}_wrist_pitch" axis="0 1 0" range="-1.6 1.6"/>
              <joint name="{p}_wrist_roll" axis="0 0 1" range="-1.6 1.6"/>
              <geom type="box" size="0.03 0.04 0.02" pos="0.02 0 0" rgba="0.25 0.25 0.28 1"/>
              <camera name="{p}_wrist" pos="0.01 0 0.05" xyaxes="{_look_axes(0.45)}" fovy="75"/>
              <site name="{p}_ee" pos="{HAND} 0 0" size="0.01" rgba="1 0 1 0"/>
              <body name="{p}_finger_a" pos="0.07 0.01 0">
                <joint name="{p}_finger_a" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}"/>
                <geom type="box" size="0.025 0.006 0.012" rgba="0.2 0.2 0.2 1"/>
              </body>
              <body name="{p}_finger_b" pos="0.07 -0.01 0">
                <joint name="{p}_finger_b" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}"/>
                <geom type="box" size="0.025 0.006 0.012" rgba="0.2 0.2 0.2 1"/>
              </body>
            </body>
          </body>
        </body>
      </body>"""


def _cube(colour: str) -> str:
    # The pedestal reaches below the floor, so a cube at any height stands on something.
    return f"""
    <body name="cube_{colour}" mocap="true" pos="0 0 -1">
      <geom type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" rgba="{COLOURS[colour]}"/>
      <geom type="cylinder" fromto="0 0 -{CUBE_HALF} 0 0 -2" size="0.03" rgba="0.55 0.45 0.35 1"/>
    </body>"""


def build_mjcf() -> str:
    """The whole scene as an MJCF string (deterministic: same text every call)."""
    arms = "".join(_arm(s) for s in SIDES)
    cubes = "".join(_cube(c) for c in COLOURS)
    return f"""<mujoco model="r1pro_reach">
  <compiler angle="radian"/>
  <option timestep="0.01"/>
  <visual>
    <quality shadowsize="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.4 0.4 0.4"/>
    <global offwidth="256" offheight="256"/>
  </visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.55 0.5" rgb2="0.4 0.42 0.45"
             width="64" height="64"/>
    <material name="grid" texture="grid" texrepeat="8 8"/>
  </asset>
  <default>
    <joint type="hinge" limited="true" damping="1"/>
    <geom contype="0" conaffinity="0"/>
  </default>
  <worldbody>
    <light directional="true" pos="0 0 6" dir="0.3 0.2 -1" diffuse="0.7 0.7 0.7" castshadow="false"/>
    <geom name="floor" type="plane" size="12 12 0.1" material="grid"/>
    <body name="base">
      <joint name="base_x" type="slide" axis="1 0 0" limited="false"/>
      <joint name="base_y" type="slide" axis="0 1 0" limited="false"/>
      <joint name="base_yaw" type="hinge" axis="0 0 1" limited="false"/>
      <geom type="box" size="0.3 0.25 0.1" pos="0 0 0.12" rgba="0.2 0.25 0.3 1"/>
      <geom type="box" size="0.05 0.1 0.03" pos="0.28 0 0.22" rgba="0.9 0.5 0.1 1"/>
      <body name="torso_1" pos="0 0 0.22">
        <joint name="torso_1" axis="0 1 0" range="-0.6 0.6"/>
        <geom type="capsule" fromto="0 0 0 0 0 0.25" size="0.06" rgba="0.6 0.6 0.65 1"/>
        <body name="torso_2" pos="0 0 0.25">
          <joint name="torso_2" axis="0 1 0" range="-0.6 0.6"/>
          <geom type="capsule" fromto="0 0 0 0 0 0.2" size="0.055" rgba="0.6 0.6 0.65 1"/>
          <body name="torso_3" pos="0 0 0.2">
            <joint name="torso_3" axis="0 1 0" range="-0.6 0.6"/>
            <geom type="capsule" fromto="0 0 0 0 0 0.15" size="0.05" rgba="0.6 0.6 0.65 1"/>
            <body name="torso_4" pos="0 0 0.15">
              <joint name="torso_4" axis="0 0 1" range="-1.2 1.2"/>
              <geom type="box" size="0.08 0.2 0.1" pos="0 0 0.1" rgba="0.3 0.35 0.45 1"/>
              <geom type="sphere" size="0.08" pos="0 0 0.32" rgba="0.85 0.85 0.88 1"/>
              <camera name="head" pos="0.09 0 0.34" xyaxes="{_look_axes(0.75)}" fovy="80"/>{arms}
            </body>
          </body>
        </body>
      </body>
    </body>{cubes}
  </worldbody>
</mujoco>
"""
