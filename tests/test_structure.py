"""The package's shape: no import cycle, no file over ~300 lines, no reference to a document
the repository does not hold. Checked statically, so a lazy (function-level) import counts too."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vreason"
MAX_LINES = 320  # "about 300": one job per file


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # `from vreason.models import adapter_for` depends on the package face; a
                # submodule imported by name depends on that submodule.
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parent_packages(graph):
    # A submodule import also runs its parents' __init__; that edge is no cycle of ours.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    return graph


def test_no_import_cycle_in_the_package():
    graph = _parent_packages(_import_graph())
    assert "vreason.models.adapter" in graph and graph["vreason.generation"], "the graph was not built"
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_file_in_the_package_is_over_about_300_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_referenced_document_is_in_the_repository():
    pattern = re.compile(r"\b((?:docs|experiments|cuda)/[\w./-]+\.md|README\.md)\b")
    missing = set()
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "experiments").rglob("*.*"),
                 REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        if path.suffix in (".png", ".mp4") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        assert not re.search(r"\b(METHOD|DESIGN|PROTOCOL)\.md\b", text), f"{path} cites a document the repo does not hold"
        missing |= {(str(path.relative_to(REPO)), ref) for ref in pattern.findall(text) if not (REPO / ref).is_file()}
    assert missing == set()


def test_lmms_eval_stays_optional():
    """`import vreason` never needs lmms-eval (the `lmms` extra): only the lmms-eval model's own
    entry-point files import it, and nothing outside `vreason/lmms_eval/` imports those."""
    graph = _import_graph()
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "lmms_eval" or n.startswith("lmms_eval.") for n in names):
                importers.add(_module_name(path))
    assert importers == {"vreason.lmms_eval.model", "vreason.lmms_eval.manifest"}
    outside = {m for m, targets in graph.items() if not m.startswith("vreason.lmms_eval")
               and any(t.startswith("vreason.lmms_eval") for t in targets)}
    assert outside == set()
