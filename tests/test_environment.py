"""The env stage: the applied determinism flags, versions and devices in a file of its own."""

import json
import subprocess
import sys
from pathlib import Path


def test_env_stage_records_the_applied_environment(tmp_path):
    bpi0 = Path(sys.executable).parent / "bpi0"
    out = tmp_path / "environment.json"
    subprocess.run([str(bpi0), "env", "--out", str(out)], check=True, cwd=Path(__file__).resolve().parents[1])
    doc = json.loads(out.read_text())
    assert doc["env_matches"] is True
    assert doc["torch_deterministic"]["use_deterministic_algorithms"] is True
    assert doc["versions"]["jax"] and doc["versions"]["torch"]
    assert doc["devices"]["jax"] and doc["devices"]["torch"]
    # bpi0 applies the host pins before torch loads: torch runs its AVX2 kernels, even on AVX-512.
    hw = doc["hardware"]
    assert hw["isa_in_use"]["torch_cpu_capability"] == "AVX2"
    assert hw["isa_in_use"]["xla_cpu_max_isa"] == "AVX2"
    assert hw["cpu"]["logical_cores"] >= 1 and "avx2" in hw["cpu"]["isa_available"]
