"""dvc.yaml's code deps are the import closure of each stage's entry point, no less and no more.

A stage's code is ``bpi0`` (``cli``: it applies the determinism pins and loads the config) plus the
module of its ``STAGES`` target, and everything those import from ``balanced_pi0``, transitively:
module-level and lazy (inside functions) imports, relative ones, ``importlib.import_module`` with a
literal or an f-string name (``balanced_pi0.backends.{backend}.train_step`` stands for every
backend), and the ``__init__`` of each package on the way, which Python runs on import. A file of
that closure missing from the stage's deps would let ``dvc status`` stay clean after a change that
alters the stage's results; a listed file outside it would rerun the stage for nothing.
"""

from __future__ import annotations

import ast
import fnmatch
import os
from pathlib import Path

import pytest
import yaml

from balanced_pi0 import cli

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "balanced_pi0"


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def all_modules() -> list[str]:
    out = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _package_of(name: str) -> str:
    path = module_file(name)
    return name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]


def imported_names(name: str) -> set[str]:
    """Every ``balanced_pi0`` module name (or glob) the module's source may import."""
    tree = ast.parse(module_file(name).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(name)
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # kept only where such a module exists
        elif isinstance(node, ast.Call) and _is_import_module(node) and node.args:
            out.add(_literal_or_glob(node.args[0]))
    return {n for n in out if n and n.split(".")[0] == PACKAGE}


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
        isinstance(f, ast.Name) and f.id in ("import_module", "__import__")
    )


def _literal_or_glob(arg: ast.expr) -> str:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "*" for v in arg.values)
    return ""


def closure(roots: list[str]) -> set[Path]:
    """The files Python runs to import ``roots``: modules, transitively, and their packages' __init__."""
    known = all_modules()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        pattern = todo.pop()
        for name in [m for m in known if fnmatch.fnmatchcase(m, pattern)]:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                parent = ".".join(parts[:i])
                if parent not in seen and module_file(parent) is not None:
                    seen.add(parent)
                    todo.extend(imported_names(parent))
    return {module_file(m).relative_to(ROOT) for m in seen}


def stage_code(stage_cmd: str) -> set[Path]:
    """The closure of ``bpi0 <stage>``: the cli itself and its target's module."""
    words = stage_cmd.split()
    assert words[0] == "bpi0", stage_cmd
    target = next(s for s in cli.STAGES if s.name == words[1]).target
    return closure(["balanced_pi0.cli", target.split(":")[0]])


#: every pipeline file, and the prefix of its stages' names here
PIPELINES = {"": ROOT / "dvc.yaml", "metaworld/": ROOT / "experiments/metaworld/dvc.yaml"}


def dvc_stages() -> dict[str, dict]:
    """Stages of every pipeline, their deps as paths from the repository root."""
    out = {}
    for prefix, path in PIPELINES.items():
        for name, spec in yaml.safe_load(path.read_text())["stages"].items():
            deps = [os.path.normpath(path.parent.relative_to(ROOT) / d) for d in spec.get("deps", [])]
            out[prefix + name] = {**spec, "deps": deps}
    return out


def _covers(dep: str, path: Path) -> bool:
    return path == Path(dep) or Path(dep) in path.parents


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_deps_cover_its_import_closure(stage):
    spec = dvc_stages()[stage]
    deps = spec.get("deps", [])
    missing = sorted(str(p) for p in stage_code(spec["cmd"]) if not any(_covers(d, p) for d in deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports these files but does not list them: {missing}"


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_stage_code_deps_are_no_wider_than_its_import_closure(stage):
    spec = dvc_stages()[stage]
    code = stage_code(spec["cmd"])
    extra = []
    for dep in spec.get("deps", []):
        path = ROOT / dep
        if not dep.startswith("src/"):
            continue
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        extra += [str(f.relative_to(ROOT)) for f in files if f.relative_to(ROOT) not in code]
    assert not extra, f"dvc.yaml stage {stage!r} lists code it does not import: {extra}"


def test_closure_follows_lazy_relative_and_dynamic_imports():
    code = stage_code("bpi0 train")
    src = Path("src/balanced_pi0")
    assert src / "groups.py" in code  # cli -> config (lazy, in main) -> groups
    assert src / "data/loader.py" in code  # lazy, inside train.train
    assert src / "backends/jax/train_step.py" in code  # import_module(f"...{backend}.train_step")
    assert src / "backends/torch/train_step.py" in code
    assert src / "backends/__init__.py" in code  # run on the way to a submodule
    assert src / "report.py" not in code
