"""The package's shape: imports point one way (no cycles) and none hide inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "enas_rnn"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        if "export_templates" in path.parts:  # fragments of generated code, not package modules
            continue
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _targets(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    """enas_rnn modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("enas_rnn")]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            parts = parts if is_pkg else parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        if not base.startswith("enas_rnn"):
            return []
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


def test_no_package_imports_inside_functions() -> None:
    found = []
    for name, tree in _modules().items():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if _targets(node, name, False):
                        found.append(f"{name}.{fn.name}: line {node.lineno}")
    assert not found, "enas_rnn imports inside functions:\n" + "\n".join(found)


def test_no_import_cycles() -> None:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in mods.items():
        is_pkg = (PKG.parent / name.replace(".", "/") / "__init__.py").is_file()
        deps = set()
        for node in tree.body:  # module level only (functions are checked above)
            for t in _targets(node, name, is_pkg):
                if t in mods and t != name:
                    deps.add(t)
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_branching_on_a_space_name_outside_its_module() -> None:
    """A space owns its semantics: code outside enas_rnn/spaces/ never asks which space it has."""
    found = []
    for path in PKG.rglob("*.py"):
        if "spaces" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in ("lstm", "enas")
                                                     for c in [node.left, *node.comparators]):
                text = ast.unparse(node)
                if ".space" in text or "space" in text.split("==")[0]:
                    found.append(f"{path.name}:{node.lineno}: {text}")
    assert not found, "\n".join(found)


def _imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    return {t for node in ast.walk(tree) for t in _targets(node, module, is_pkg)}


def test_apps_are_used_only_by_their_entry_points() -> None:
    """enas_rnn/apps/ holds app bodies: no other app, no library module and no script imports one (the library
    parts they share live in the modules of their concepts: trainrun, searchrun, comparison, selection, trained)."""
    found = []
    for name, tree in _modules().items():
        if name.startswith("enas_rnn.cli"):
            continue
        path = PKG.parent / (name.replace(".", "/") + ".py")
        if not path.is_file():
            path = PKG.parent / name.replace(".", "/") / "__init__.py"
        for t in _imports_of(path, name):
            if t.startswith("enas_rnn.apps.") and t.split(".")[2] != name.split(".")[-1] or \
                    (t == "enas_rnn.apps" and not name.startswith("enas_rnn.apps")):
                if name.startswith("enas_rnn.apps.") and t.startswith(name):
                    continue
                found.append(f"{name} imports {t}")
    scripts = PKG.parent / "scripts"
    for path in sorted(scripts.glob("*.py")):
        for t in _imports_of(path, "scripts." + path.stem):
            if t.startswith("enas_rnn.apps"):
                found.append(f"scripts/{path.name} imports {t}")
    assert not found, "\n".join(found)


def test_every_config_value_rule_sits_beside_its_field() -> None:
    """No table of value rules far from the fields: conf.py composes schemas, the rules are field metadata."""
    text = (PKG / "conf.py").read_text()
    assert "RULES" not in text and "check_section" not in text
