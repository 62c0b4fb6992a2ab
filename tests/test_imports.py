"""The package's import graph: no circle, and no training stage depends on the report."""
import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "simclr_ad"
STAGES = ("pretrain", "finetune", "baselines", "bench", "predict")
REPORT = {"report", "camstudy", "ablation", "document", "stats", "comparison"}


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: runs only when the file is the script, a module of its own."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _imports(tree: ast.AST, top_level_only: bool) -> set[str]:
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "simclr_ad":
                found |= {a.name for a in node.names}
            elif node.module.startswith("simclr_ad."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("simclr_ad.")}
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):
                continue
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            stack.append(child)
    return {name for name in found if (PACKAGE / f"{name}.py").is_file()}


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the simclr_ad modules it imports (function-level imports too, unless top_level_only)."""
    return {path.stem: _imports(ast.parse(path.read_text()), top_level_only) for path in sorted(PACKAGE.glob("*.py"))}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_at_import_time():
    assert _cycle(graph(top_level_only=True)) is None


def test_data_and_splits_do_not_import_each_other():
    edges = graph()
    assert "splits" not in _reachable(edges, "data") and "data_cli" not in _reachable(edges, "data")


def test_no_training_stage_imports_the_report():
    edges = graph()
    for stage in STAGES:
        assert not (_reachable(edges, stage) & REPORT), stage


def test_no_import_circle_even_inside_functions():
    assert _cycle(graph()) is None
