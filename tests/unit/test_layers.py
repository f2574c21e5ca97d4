"""Imports go one way: checked by importing each module in a fresh interpreter, not from the source.

A module's direct imports say little: ``import davfed_fuse.x`` loads whatever ``x`` loads, and
``x``'s package. So each check starts a new Python, imports (or runs) the module, and reads
``sys.modules``. Only two checks read the source, because they are about import statements
themselves: no import cycle (function-level imports included), and no import of the test
federation outside ``davfed testfed``'s lazy dispatch.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "davfed_fuse"
FAKE_DAEMON = REPO / "tests" / "cli" / "fake_daemon.py"


def all_modules() -> list[str]:
    """Every module of the package, dotted (``davfed_fuse.cache.stats``); packages by name."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = all_modules()
#: Run as ``python -m davfed_fuse``: importing it would run davfed.
RUNNABLE = {"davfed_fuse.__main__"}


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """``sys.modules`` of a fresh interpreter after it ran ``code``."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def loaded_by(module: str) -> set[str]:
    return loaded_after(f"import {module}")


def among(loaded: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Which of ``forbidden`` (packages or modules) are loaded, themselves or a submodule."""
    names = set(loaded)
    return sorted(f for f in forbidden if any(n == f or n.startswith(f + ".") for n in names))


IO_FRAMEWORKS = ("trio", "httpx", "pyfuse3", "aiohttp")


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("davfed_fuse.cache.")])
def test_the_cache_loads_neither_fuse_nor_http(module: str) -> None:
    assert among(loaded_by(module), ["pyfuse3", "httpx"]) == []


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("davfed_fuse.net.")])
def test_the_network_loads_neither_fuse_nor_the_cache_nor_the_daemon(module: str) -> None:
    forbidden = ["pyfuse3", "davfed_fuse.cache", "davfed_fuse.daemon"]
    assert among(loaded_by(module), forbidden) == []


PURE = [
    "davfed_fuse.errors",
    "davfed_fuse.config",
    "davfed_fuse.exitcodes",
    "davfed_fuse.redaction",
    "davfed_fuse.buffers",
    "davfed_fuse.optionvalues",
    "davfed_fuse.optiontable",
    "davfed_fuse.options",
    "davfed_fuse.configfile",
    "davfed_fuse.cache.space",
    "davfed_fuse.system.fusermount",
    "davfed_fuse.cli.config",
    "davfed_fuse.net.webdav",
    "davfed_fuse.net.signedurl",
    "davfed_fuse.net.proxies",
    "davfed_fuse.cache.blockmath",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_load_no_io_framework(module: str) -> None:
    assert among(loaded_by(module), IO_FRAMEWORKS) == []


def test_the_mount_helper_path_loads_neither_trio_nor_httpx_nor_pyfuse3(tmp_path: Path) -> None:
    """``bin/mount.davfed``'s code, run for real up to and including starting the daemon.

    The daemon is the launcher-test stand-in, which reports READY at once: the helper
    returns 0 only after it forked, exec'd and heard from it, so everything the helper
    itself would load has been loaded.
    """
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    argv = ["mount.davfed", "https://dynafed.example/belle", str(mountpoint)]
    argv += ["-o", f"cache_dir={tmp_path / 'cache'}"]
    code = (
        "from davfed_fuse.cli.main import helper_main\n"
        f"assert helper_main({argv!r}) == 0, 'the helper failed'\n"
    )
    env = {
        "DAVFED_DAEMON_COMMAND": f"{sys.executable} {FAKE_DAEMON}",
        "FAKE_DAEMON_MODE": "ready",
    }
    loaded = loaded_after(code, env)
    assert "davfed_fuse.cli.launch" in loaded  # it did go the launcher's way
    assert among(loaded, ["trio", "httpx", "pyfuse3", "davfed_fuse.daemon"]) == []


def test_no_module_loads_the_test_federation() -> None:
    code = "\n".join(f"import {m}" for m in MODULES if m not in RUNNABLE)
    assert among(loaded_after(code), ["davfed_testfed", "aiohttp"]) == []


# --- the import statements ------------------------------------------------------------------


def module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module an import statement anywhere in ``path`` names (functions included).

    ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``; relative
    imports are made absolute. Names outside davfed are kept as written.
    """
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                names.add(candidate if candidate in MODULES else base)
    return names


def import_graph() -> dict[str, set[str]]:
    """davfed module -> the davfed modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[module_of(path)] = {n for n in imported_names(path) if n in MODULES}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module
    (or a module importing itself), as the path ``[a, b, ..., a]`` (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [cycle_in(sorted(c)[0], c, graph) for c in components]


def cycle_in(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from ``start`` back to itself inside ``component`` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")  # pragma: no cover - Tarjan said it is


def describe(found: Sequence[list[str]]) -> str:
    return "; ".join(" -> ".join(cycle) for cycle in found)


def test_there_is_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles: {describe(found)}"


def test_the_cycle_finder_names_the_modules_of_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert describe(cycles(graph)) == "a -> b -> c -> a; e -> e"
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports() -> None:
    assert "davfed_fuse.cli.testfed" in import_graph()["davfed_fuse.cli.main"]
    assert "davfed_fuse.daemon.main" in import_graph()["davfed_fuse.cli.mount"]


def test_only_the_testfed_dispatch_imports_the_test_federation() -> None:
    importers = sorted(
        module_of(path)
        for path in PACKAGE.rglob("*.py")
        if any(n.split(".")[0] == "davfed_testfed" for n in imported_names(path))
    )
    assert importers == ["davfed_fuse.cli.testfed"]
