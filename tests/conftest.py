"""Every test leaves the process as it found it: ``bpi0``'s ``main`` (called in-process by the stage
tests) applies the determinism pins to ``os.environ`` and torch's switches, which must not leak into
the tests after it."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(autouse=True)
def _restore_environment():
    env = dict(os.environ)
    torch = sys.modules.get("torch")
    deterministic = torch.are_deterministic_algorithms_enabled() if torch is not None else None
    yield
    os.environ.clear()
    os.environ.update(env)
    torch = sys.modules.get("torch")
    if torch is not None and deterministic is not None:
        torch.use_deterministic_algorithms(deterministic)
