"""The package's shape: one direction of imports, torch-free study reading, private Optuna calls in one module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "mbv2_search"


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports, counting imports inside functions too."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mbv2_search"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
        graph[name] = found - {name, "mbv2_search"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "mbv2_search.config" in graph and graph["mbv2_search.study"]  # the graph was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_reading_a_study_imports_neither_torch_nor_lightning():
    script = (
        "import sys\n"
        "from mbv2_search.study import load_study\n"
        "from mbv2_search.config import load_arch_file\n"
        "load_study('studies/quickstart.yaml'); load_study('studies/cifar10_gpu.yaml')\n"
        "load_arch_file('search_spaces/mobilenet_v2.yaml')\n"
        "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


PRIVATE = re.compile(r"\._(storage|trial_id|study_id|backend)\b|from optuna[\w.]*\._\w+ import|optuna\.\w+\._\w+")


def test_private_optuna_calls_live_in_one_module():
    users = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if PRIVATE.search(path.read_text()))
    assert users == ["optuna_private.py"]


def test_no_module_is_much_over_400_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}


def test_each_knob_is_derived_everywhere_from_its_one_declaration():
    """Schema field, CLI flag, vary: rule and validation all come from knobs.KNOBS: none is listed elsewhere."""
    from click.testing import CliRunner

    from mbv2_search.cli import cli
    from mbv2_search.config import KnobsModel
    from mbv2_search.knobs import KNOBS, SEARCHABLE

    assert set(KnobsModel.model_fields) == set(KNOBS)
    options = {name for param in cli.commands["cost"].params for name in [param.name]}
    assert set(KNOBS) <= options
    help_text = CliRunner().invoke(cli, ["cost", "--help"], terminal_width=200).output
    for name, info in KNOBS.items():
        assert (info.flag or "--" + name.replace("_", "-")).split("/")[0] in help_text
    assert set(SEARCHABLE) == {n for n, i in KNOBS.items() if i.searchable} | {"seed"}
    assert {"row_widths", "repeats", "strides", "se_ratio", "kernels", "expansion"} <= set(SEARCHABLE)
