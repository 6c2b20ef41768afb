"""balanced_pi0.determinism: one environment, applied and recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from balanced_pi0 import determinism


def test_cpu_flags_are_the_measured_single_thread_ones():
    flags = determinism.DETERMINISM_ENV["XLA_FLAGS"].split()
    assert "--xla_cpu_multi_thread_eigen=false" in flags
    assert "--xla_gpu_deterministic_ops=true" in flags
    # XLA ignores every flag after a token without "--" (a user's flags appended after it would vanish)
    assert all(f.startswith("--") for f in flags), flags


def _run(code: str, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_apply_sets_env_and_torch_switches_and_record_reports_them():
    # A fresh interpreter: apply() changes process-wide state that other tests must not inherit.
    env = {k: v for k, v in os.environ.items() if k not in determinism.DETERMINISM_ENV}
    code = (
        "import json, torch\n"
        "from balanced_pi0 import determinism\n"
        "before = determinism.record()\n"
        "determinism.apply()\n"
        "after = determinism.record()\n"
        "print(json.dumps([before, after]))\n"
    )
    before, after = _run(code, env)
    assert not before["env_matches"]
    assert before["torch_deterministic"]["use_deterministic_algorithms"] is False
    assert after["env_matches"]
    assert after["env"] == determinism.DETERMINISM_ENV
    assert after["torch_deterministic"] == {
        "use_deterministic_algorithms": True,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "matmul_allow_tf32": False,
    }
    assert after["versions"]["torch"].startswith("2.11.0")
    assert after["devices"]["torch"]  # "cpu" here, the GPU names on a GPU


def test_apply_keeps_the_users_other_xla_flags():
    env = {k: v for k, v in os.environ.items() if k not in determinism.DETERMINISM_ENV}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=true"
    code = (
        "import json, os, jax\n"
        "from balanced_pi0 import determinism\n"
        "determinism.apply()\n"
        "print(json.dumps([os.environ['XLA_FLAGS'], jax.device_count(), determinism.record()['env_matches']]))\n"
    )
    flags, devices, matches = _run(code, env)
    assert devices == 2 and matches
    assert "--xla_cpu_multi_thread_eigen=false" in flags.split()  # ours wins over the user's
    assert "--xla_cpu_multi_thread_eigen=true" not in flags.split()
    assert determinism.merge_xla_flags(None) == determinism.DETERMINISM_ENV["XLA_FLAGS"]


def test_record_is_the_same_twice():
    assert determinism.record() == determinism.record()


# ----------------------------------------------------------------------------- two hosts, one result --

#: Two hosts as their instruction sets make them: A runs each library at its widest ISA here, B at an
#: older level (XLA without AVX2/FMA, ATen's and oneDNN's scalar/SSE kernels). The pins override
#: both, as they do on real hosts: XLA's ``max_isa`` flag replaces the host's, the env vars are set.
HOSTS = {
    "a": {},
    "b": {
        "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2",
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
    },
}
CHILD = Path(__file__).with_name("two_hosts_child.py")


def _train_as_hosts() -> dict[tuple[str, str], dict]:
    """Every (pinned/unpinned, host) toy training at once, each in a fresh interpreter."""
    # The machine's own OPENBLAS_CORETYPE stays (determinism.HOST_KEEPS): its OpenBLAS may need it.
    pinned = determinism.DETERMINISM_ENV.keys() - determinism.HOST_KEEPS
    base = {k: v for k, v in os.environ.items() if k not in pinned}
    procs = {}
    for mode in ("pinned", "unpinned"):
        for host, settings in HOSTS.items():
            cmd = [sys.executable, str(CHILD), mode]
            env = {**base, **settings}
            procs[mode, host] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()[-3000:]
        out[key] = json.loads(stdout.decode().splitlines()[-1])
    return out


def test_two_hosts_train_identical_bytes_only_with_the_host_pins():
    runs = _train_as_hosts()
    for backend in ("jax", "torch"):
        pinned = runs["pinned", "a"][backend], runs["pinned", "b"][backend]
        unpinned = runs["unpinned", "a"][backend], runs["unpinned", "b"][backend]
        assert pinned[0] == pinned[1], backend  # the trained params' bytes and every loss
        # Without the pins the same code and data give other bits on the two hosts: the pins matter.
        assert unpinned[0]["params"] != unpinned[1]["params"], backend


def test_host_pins_are_separable_and_every_xla_token_is_a_flag():
    free = determinism.without_host_pins()
    assert not set(determinism.HOST_ENV) & set(free)
    assert "--xla_cpu_max_isa=AVX2" in determinism.DETERMINISM_ENV["XLA_FLAGS"].split()
    assert "--xla_cpu_max_isa=AVX2" not in free["XLA_FLAGS"].split()
    assert all(f.startswith("--") for f in free["XLA_FLAGS"].split())


def test_apply_keeps_a_machines_own_openblas_coretype(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # only the env is under test here
    for key in determinism.DETERMINISM_ENV:  # restored by monkeypatch after the test
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    determinism.apply()
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"  # the machine knows its OpenBLAS's bugs
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2"
    assert determinism.record()["env_matches"]
