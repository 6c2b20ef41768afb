"""balanced_pi0.hardware: the one probe of the machine, robust to what a machine lacks."""

from __future__ import annotations

import json

from balanced_pi0 import hardware


def test_probe_names_the_cpu_and_is_json():
    doc = json.loads(json.dumps(hardware.probe()))
    cpu = doc["cpu"]
    assert cpu["logical_cores"] >= 1
    assert set(cpu["isa_available"]) <= set(hardware.ISA_FLAGS)
    assert cpu["caches"] is None or all({"level", "type", "size"} <= set(c) for c in cpu["caches"])
    assert set(doc["isa_in_use"]) == {
        "xla_cpu_max_isa",
        "torch_cpu_capability",
        "onednn_max_cpu_isa",
        "mkl_cbwr",
        "openblas_coretype",
    }


def test_probe_without_proc_sys_or_gpu_gives_none_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "_CPUINFO", tmp_path / "no-cpuinfo")
    monkeypatch.setattr(hardware, "_CACHE", tmp_path / "no-cache")
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    cpu = hardware.cpu()
    assert cpu["isa_available"] == [] and cpu["caches"] is None and cpu["vendor"] is None
    assert hardware.gpu() is None  # torch, if loaded here, sees no CUDA device on a CPU machine


def test_probe_reads_the_xla_isa_flag_in_use(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false --xla_cpu_max_isa=AVX2")
    assert hardware.isa_in_use()["xla_cpu_max_isa"] == "AVX2"
