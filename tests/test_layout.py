"""The package's imports run one way (docs/ARCHITECTURE.md): commands -> training -> evaluation
-> {listbatch, rewards, sampling, data} -> conventions and models. Every import of a perpo
module is read from the source, those inside functions included, so a lazy import cannot hide
a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "perpo"

# Layers, top to bottom; a module may import its own layer's modules or lower layers', never higher.
LAYERS = [
    ("perpo.commands",),
    ("perpo.reporting",),
    ("perpo.training", "perpo.testing"),
    ("perpo.config",),
    ("perpo.evaluation",),
    ("perpo.listbatch", "perpo.losses"),
    ("perpo.rewards", "perpo.sampling"),
    ("perpo.data", "perpo.config"),
    ("perpo.prompting", "perpo.answers"),
    ("perpo.boxes", "perpo.models", "perpo.atomic"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every perpo import in ``path``."""
    found = []
    module = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("perpo")]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            if target.startswith("perpo"):
                found += [(target, a.name, node.lineno) for a in node.names]
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, imported, _ in imports(path):
            sub = f"{target}.{imported}" if imported else None
            edges[name].add(sub if sub in modules else target)
    return edges


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it in LAYERS (and docs/ARCHITECTURE.md)")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt == node or nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_run_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for target, _, line in imports(path):
            if layer(target) < layer(name):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {name} imports {target}")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_private_name_crosses_modules():
    crossing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for target, imported, line in imports(path):
            if imported and imported.startswith("_") and target != name:
                crossing.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}.{imported}")
    assert not crossing, "private names imported across modules:\n" + "\n".join(crossing)


def documented_tree() -> set[str]:
    """The files of the ``perpo/`` tree drawn in docs/ARCHITECTURE.md (two spaces a level)."""
    lines = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text().splitlines()
    start = lines.index("perpo/")
    files, folders = set(), ["perpo"]
    for line in lines[start + 1:]:
        if line.startswith("```"):
            break
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            files.add("/".join([*folders, name]))
    return files


def test_the_architecture_doc_draws_the_package_as_it_is():
    actual = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    drawn = documented_tree()
    assert actual - drawn == set(), f"docs/ARCHITECTURE.md does not draw {sorted(actual - drawn)}"
    assert drawn - actual == set(), f"docs/ARCHITECTURE.md draws files that do not exist: {sorted(drawn - actual)}"
