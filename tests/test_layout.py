"""The library's layout: importing any ``vlmdpo`` module (but the demo hook, the CLI) loads no ``data_recipes``
module; no two ``vlmdpo`` modules import each other, even lazily; imports run one way down the layers
(``LAYERS``), folder by folder; the README's layout section names every folder the package has."""

import ast
import json
import re
import pkgutil
import subprocess
import sys
from pathlib import Path

import vlmdpo

PACKAGE = Path(vlmdpo.__file__).parent
ENTRY_POINTS = {"vlmdpo.cli"}  # ``vlmdpo demo`` imports the shapes recipe, lazily, from here


def library_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="vlmdpo.")]
    return sorted(set(names) - ENTRY_POINTS)


def test_the_library_imports_no_recipe():
    modules = library_modules()
    assert {"vlmdpo.train.loop", "vlmdpo.train.step", "vlmdpo.train.checkpoints", "vlmdpo.eval.runner"} <= set(modules)
    script = ("import importlib, json, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'data_recipes')))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(loaded.stdout.splitlines()[-1]) == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> vlmdpo modules it imports``, top-level and inside functions alike."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or ``None``. A package importing its own submodules (an
    ``__init__`` re-exporting them) is not a circle unless a submodule imports the package back."""
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return trail[trail.index(target):] + [target]
            if target not in state and (found := visit(target, trail + [target])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_inside_the_library():
    graph = import_graph()
    assert "vlmdpo.train.step" in graph["vlmdpo.train.loop"]  # the graph sees real imports
    assert find_cycle(graph) is None, find_cycle(graph)


LAYERS = [
    ("vlmdpo", "vlmdpo.names", "vlmdpo.done_marker"),
    ("vlmdpo.tiny",),
    ("vlmdpo.data",),
    ("vlmdpo.model",),
    ("vlmdpo.forward",),
    ("vlmdpo.methods",),
    ("vlmdpo.config", "vlmdpo.config_reference"),
    ("vlmdpo.eval",),
    ("vlmdpo.train",),
    ("vlmdpo.show",),
    ("vlmdpo.cli",),
]
"""Bottom to top: a module may import its own layer's modules and those of the layers below, never above."""


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the longest entry that is ``module`` or a package holding it."""
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or (module.startswith(name + ".") and name != "vlmdpo")]
    assert matches, f"{module} is in no layer of tests/test_layout.py: add its folder to LAYERS"
    return max(matches)[1]


def test_layer_of_places_modules_by_folder():
    assert layer_of("vlmdpo.data.readers.question") == layer_of("vlmdpo.data") == 2
    assert layer_of("vlmdpo.config") == layer_of("vlmdpo.config_reference") < layer_of("vlmdpo.eval.config")
    assert layer_of("vlmdpo") == 0


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs from a lower layer up to a higher one, as ``importer -> imported``."""
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(module))


def test_upward_imports_are_found():
    assert upward_imports({"vlmdpo.data.rows": {"vlmdpo.train.step"}, "vlmdpo.train.step": {"vlmdpo.data.rows"}}) \
        == ["vlmdpo.data.rows -> vlmdpo.train.step"]


def test_imports_run_one_way_down_the_layers():
    graph = import_graph()
    assert "vlmdpo.data.rows" in graph["vlmdpo.data.collator"]
    assert upward_imports(graph) == []


def test_the_readme_layout_names_every_folder():
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    named = set(re.findall(r"`vlmdpo/(\w+)/`", section))
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert named == folders, f"README layout names {sorted(named)}, the package has {sorted(folders)}"
    assert {names[0].split(".")[-1] for names in LAYERS[1:] if "." in names[0]} >= folders


def test_every_old_module_path_still_imports_and_names_the_new_one():
    """Code written against the flat layout keeps working, told where each module lives now (one fresh
    interpreter, so no test imported the modules first)."""
    script = ("import importlib, json, warnings\n"
              "import vlmdpo\n"
              "out = {}\n"
              "for old, new in vlmdpo.MOVED.items():\n"
              "    with warnings.catch_warnings(record=True) as caught:\n"
              "        warnings.simplefilter('always')\n"
              "        module = importlib.import_module(old)\n"
              "    out[old] = [module is importlib.import_module(new),\n"
              "                [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]]\n"
              "print(json.dumps(out))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert set(found) == set(vlmdpo.MOVED) and len(found) > 20
    for old, (same, messages) in found.items():
        assert same, f"{old} is not the module at {vlmdpo.MOVED[old]}"
        assert f"{old} moved to {vlmdpo.MOVED[old]}: import it from there" in messages
    assert not any(name in {p.name for p in PACKAGE.glob("*.py")} for name in
                   (old.split(".")[-1] + ".py" for old in vlmdpo.MOVED)), "an old module file is back"
