"""The project's import graph, read with `ast` (nothing is imported, nothing trains): no package
imports itself round a cycle, and `serving` imports no other project package, because Triton's
Python backend loads it vendored beside a model.py, without builder, client or server."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("builder", "serving", "client", "cli", "server", "perf", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """{dotted name: file} for every .py file under the project packages."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.Module, module: str, is_package: bool, module_level: bool) -> list[str]:
    """The dotted names `tree` imports: a `from a import b` gives "a.b" (a module, or a name in
    a; resolve() tells). module_level: only statements run on import (the module's body and
    its top-level if/try blocks, not functions, classes or `if TYPE_CHECKING`)."""
    if module_level:
        nodes, todo = [], list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    todo.extend(getattr(node, field, []))
            elif isinstance(node, ast.ExceptHandler):
                todo.extend(node.body)
            else:
                nodes.append(node)
    else:
        nodes = list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the module's package upwards
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def resolve(name: str, modules: dict) -> str | None:
    """The project module `name` loads: itself, or the longest prefix that is a module (a name
    imported from a package's __init__); None outside the project."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph(module_level: bool = True) -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = {resolve(n, modules) for n in imported_names(tree, name, path.name == "__init__.py", module_level)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first repeated at the end) per strongly connected component
    of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]

    def strongconnect(root):
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return [_a_cycle(graph, c) for c in components]


def _a_cycle(graph, component: set[str]) -> list[str]:
    """A path from the component's first module back to itself, inside the component (BFS)."""
    start = min(component)
    parent, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return list(reversed(path)) + [start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    return sorted(component)


def test_the_graph_is_read():
    """The graph is the project's: the modules are found and their imports resolved."""
    graph = import_graph()
    assert "builder.run_folder" in graph["builder.stages"]
    assert "serving.contract" in graph["builder.repository"]


def test_cycles_are_found_and_named():
    """The checker itself: a made-up cycle is reported as a path."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (module-level imports): " + "; ".join(" -> ".join(c) for c in found)


def test_no_cycle_hidden_in_a_function():
    """An import moved into a function to dodge a cycle is still a cycle in the design."""
    found = cycles(import_graph(module_level=False))
    assert not found, "import cycles (any import, functions included): " + "; ".join(" -> ".join(c) for c in found)


def test_serving_imports_no_other_project_package():
    """Any import, even inside a function: the vendored copy has no other package to find."""
    others = set(PACKAGES) - {"serving"}
    bad = [f"{name} imports {target}" for name, targets in import_graph(module_level=False).items()
           if name.split(".")[0] == "serving" for target in sorted(targets) if target.split(".")[0] in others]
    assert not bad, "serving must stay importable alone (Triton's Python backend): " + "; ".join(bad)
