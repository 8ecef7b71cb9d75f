"""The layout of the package (README, "Map of the code"): dependencies run one way between the stage folders."""

import ast
import subprocess
import sys
from pathlib import Path

import dicecfg

ROOT = Path(dicecfg.__file__).resolve().parent


def _imports() -> dict[str, set[tuple[str, str | None]]]:
    """Module -> the (module, name) pairs it imports from dicecfg, lazy imports included, type-only ones not."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[:-1]  # what a relative import of level 1 starts from
        name = ".".join(parts if parts[-1] != "__init__" else package)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        found = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                found |= {(a.name, None) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package[: len(package) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                found |= {(base, a.name) for a in node.names}
        out[name] = {(m, n) for m, n in found if m.split(".")[0] in ("dicecfg", "torch")}
    return out


def _targets(imports: set[tuple[str, str | None]], modules: set[str]) -> set[str]:
    """The dicecfg modules a set of imports reaches (``from pkg import module`` counts as the module)."""
    return {
        f"{m}.{n}" if f"{m}.{n}" in modules else m for m, n in imports if m.startswith("dicecfg")
    } & modules


def test_no_import_cycles():
    imports = _imports()
    modules = set(imports)
    graph = {m: _targets(imports[m], modules) - {m} for m in modules}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [])


def test_stages_depend_one_way():
    imports = _imports()
    modules = set(imports)
    for m, found in imports.items():
        reached = _targets(found, modules)
        if m.startswith(
            ("dicecfg.evaluation", "dicecfg.bench", "dicecfg.sampling", "dicecfg.metrics", "dicecfg.app")
        ):
            assert not {t for t in reached if t.startswith("dicecfg.training")}, m
        if m.startswith(("dicecfg.world", "dicecfg.metrics", "dicecfg.sampling", "dicecfg.evaluation")):
            assert not {t for t in reached if t.startswith("dicecfg.app")}, m  # the app sits on top
        if m.startswith(("dicecfg.world", "dicecfg.metrics")):
            assert not {t for t in reached if t.startswith(("dicecfg.sampling", "dicecfg.evaluation"))}, m
        if m.startswith("dicecfg.world"):
            assert not any(t.startswith("torch") for t, _ in found), m  # the world is numpy only
            assert reached <= {t for t in modules if t.startswith("dicecfg.world")}, m


def test_no_private_names_across_modules():
    imports = _imports()
    modules = set(imports)
    for m, found in imports.items():
        private = [
            f"{mod}.{n}"
            for mod, n in found
            if n and n.startswith("_") and not n.startswith("__") and f"{mod}.{n}" not in modules
        ]
        assert not private, (m, private)


def test_the_world_loads_without_torch():
    code = "import sys, dicecfg.world; assert 'torch' not in sys.modules, 'torch was imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_top_level_is_small():
    modules = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
    assert len(modules) <= 8, modules


def test_public_callables_document_their_arguments():
    """Public names whose arguments are not obvious carry an ``Args:`` section (diffusers' convention) that
    names every argument (the sampling methods: every setting)."""
    import dataclasses
    import inspect

    from dicecfg import Sharpener, disable_dice, distill, enable_dice, sharpen
    from dicecfg.sampling.spelling import method_classes

    methods = tuple(
        c for c in method_classes().values() if c.keys
    )  # every method with settings, APG included
    assert len(methods) >= 5
    for obj in (*methods, Sharpener, distill, sharpen, enable_dice, disable_dice):
        doc = inspect.getdoc(obj) or ""
        assert "\nArgs:\n" in doc, obj
        args = doc.split("\nArgs:\n", 1)[1]
        names = (
            [f.name for f in dataclasses.fields(obj)]
            if dataclasses.is_dataclass(obj)
            else [p for p in inspect.signature(obj).parameters if p not in ("self", "kwargs")]
        )
        for name in names:
            assert f"{name}:" in args or f"{name}," in args or f", {name}" in args, (obj, name)
    for method in (Sharpener.forward, Sharpener.edit, Sharpener.from_pretrained):
        assert "\nArgs:\n" in (inspect.getdoc(method) or ""), method
