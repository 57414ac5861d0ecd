"""The shape of the house: no import circles, no reads of another module's private members,
light imports where no model is needed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "envs", "rewards")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods["rlhf_gym." + ".".join(parts)] = f
    return mods


def _import_graph() -> dict[str, set[str]]:
    """Every project import, at module level, in functions and under TYPE_CHECKING alike.

    ``from package import submodule`` counts as an import of the submodule (the package's
    ``__init__`` is already running or done); importing any other name from a package counts
    as importing the package."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                found = [s for s in subs if s in mods]
                targets = found + ([node.module] if len(found) < len(subs) else [])
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = _import_graph()
    assert sum(map(len, graph.values())) > 50  # the graph was really read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_reads_another_modules_private_members():
    """``x._name`` outside ``self``/``cls``/``super()`` is refused when ``_name`` is a private
    attribute or function defined in another project module."""
    files = [f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")]
    owners: dict[str, set[Path]] = {}
    trees = {f: ast.parse(f.read_text()) for f in files}
    for f, tree in trees.items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                owners.setdefault(node.attr, set()).add(f)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                owners.setdefault(node.name, set()).add(f)
    found = []
    for f, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__"):
                continue
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                continue
            if node.attr in owners and f not in owners[node.attr]:
                found.append(f"{f.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def _run(code: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_agents_and_listing_rewards_import_no_torch():
    out = _run(
        "import sys\n"
        "import rlhf_gym.agents\n"
        "print('agents', 'torch' in sys.modules)\n"
        "from rlhf_gym.agents.cli import main\n"
        "main(['rewards'])\n"
        "print('rewards', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
        "from rlhf_gym.agents import make_agent, PPO\n"  # the names still resolve, lazily
        "print('used', 'torch' in sys.modules, PPO.__name__)\n"
    )
    assert "agents False" in out
    assert "rewards False False" in out
    assert "used True PPO" in out
