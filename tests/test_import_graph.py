"""Issue 37: arrows point down (store <- extract <- train) and no module imports itself back through others, counting
every import in a module, the lazy ones inside functions and those under TYPE_CHECKING too."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVEL = {"store": 0, "extract": 1, "train": 2}


def _modules() -> dict[str, str]:
    found = {}
    for pkg in LEVEL:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    name = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                    found[name.removesuffix(".__init__")] = os.path.join(d, f)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in LEVEL:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_arrows_point_down():
    up = [f"{m} imports {d}" for m, deps in _graph().items() for d in deps
          if LEVEL[d.split(".")[0]] > LEVEL[m.split(".")[0]]]
    assert not up, up


def test_no_import_circles():
    graph, index, low, stack, on, cycles, counter = _graph(), {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _section(doc: str, pkg: str) -> str:
    start = doc.index(f"## `{pkg}/`")
    end = doc.find("\n## ", start + 1)
    return doc[start: end if end > 0 else None]


def test_every_module_is_on_the_map():
    """docs/architecture.md lists every module of every package, in its package's section (a sub-package's module by
    its path in the package, e.g. `probe/heads.py`), and its diagram names every console script."""
    import tomllib

    doc = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    missing = []
    for name, path in _modules().items():
        if path.endswith("__init__.py"):
            continue
        pkg, rel = name.split(".")[0], os.path.relpath(path, os.path.join(ROOT, name.split(".")[0])).replace(os.sep, "/")
        section = _section(doc, pkg)
        sub, _, base = rel.rpartition("/")
        if f"`{rel}`" not in section and not (sub and f"`{sub}/`" in section and f"`{base}`" in section):
            missing.append(f"{pkg}/{rel}")
    assert not missing, f"docs/architecture.md does not list {missing}"
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    diagram = doc[doc.index("```"): doc.index("```", doc.index("```") + 3)]
    assert not [s for s in scripts if s not in diagram], [s for s in scripts if s not in diagram]


def test_modules_and_functions_stay_small():
    """Issue 37: no module over 400 lines, no function over 80, and every package opens with its docstring."""
    big, long_functions, bare = [], [], []
    for name, path in _modules().items():
        source = open(path, encoding="utf-8").read()
        tree = ast.parse(source)
        if source.count("\n") > 400:
            big.append(f"{name} ({source.count(chr(10))} lines)")
        long_functions += [f"{name}.{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
                           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
        if path.endswith("__init__.py") and not ast.get_docstring(tree):
            bare.append(name)
    assert not big and not long_functions and not bare, (big, long_functions, bare)
