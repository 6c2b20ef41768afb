"""Preparation stages between the dataset and training.

- ``analyze``: action magnitudes per group (values, per-step changes, motion per
  episode), plots, and suggested group weights.
- ``normstats``: exact global normalisation statistics in openpi's format, in the
  ``standard``, ``balanced`` and ``per_timestep`` variants.
- ``filter``: arm-heavy training episodes, scored on whole episodes.

``motion`` holds the one definition of "how much a group moved" that analyze and
filter share; ``io`` holds the dataset/split reading and atomic, deterministic writes.
"""
