"""``bpi0 env``: the pipeline's environment as an output of its own.

The determinism flags (applied, as every stage applies them), library versions, the
devices both frameworks see and the hardware (``hardware.probe``: CPU model, instruction sets
available and in use, cores, caches, GPUs): the paper's numbers are claimed for this environment.
Because it names the machine, this record (alone among the outputs) differs from host to host.
"""

from __future__ import annotations

from pathlib import Path

from balanced_pi0 import determinism, hardware, io


def run(params, out: str = "results/environment.json") -> None:
    import jax  # noqa: F401  (imported first: apply() sets torch's switches only once it is loaded)
    import torch  # noqa: F401

    determinism.apply()
    io.write_json(Path(out), {**determinism.record(), "hardware": hardware.probe()})
