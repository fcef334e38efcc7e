"""The package layout's promises: registries fill themselves, the library never imports the CLI, and no
two modules (or subpackages) import each other, even lazily inside a function."""
import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph(fold_to_subpackage: bool) -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p for p in SRC.rglob("*.py")}
    fold = (lambda m: ".".join(m.split(".")[:2])) if fold_to_subpackage else (lambda m: m)
    graph: dict[str, set[str]] = {fold(m): set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and not m.startswith(t + ".") and fold(t) != fold(m):
                    graph[fold(m)].add(fold(t))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each node that can reach itself, with the path found (depth-first)."""
    found = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    found.append(path + [start])
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return found


def test_no_import_cycles_between_modules_or_subpackages():
    assert cycles(import_graph(False)) == []
    assert cycles(import_graph(True)) == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                        ["c", "a", "b", "c"]]


def test_no_library_module_imports_the_cli():
    graph = import_graph(False)
    offenders = [m for m, targets in graph.items() if m not in ("kdx.__main__",) and not m.startswith("kdx.cli") and any(
        t.startswith("kdx.cli") for t in targets)]
    assert offenders == []


def test_importing_a_subpackage_registers_its_entries_without_the_cli():
    code = ("import sys, kdx.sampling; from kdx.registry import SOURCES, ALL; "
            "print(len(SOURCES._entries), 'kdx.cli' in sys.modules, 'typer' in sys.modules); "
            "print(all(len(r.names()) > 0 for r in ALL.values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) >= 8 and out[1:] == ["False", "False", "True"]
