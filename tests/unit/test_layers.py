"""Imports go one way (docs: style guide point 1): checked from the source, not by convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "davfed_fuse"


def imports_of(module: str) -> set[str]:
    """Top-level names of everything ``davfed_fuse/<module>.py`` imports, anywhere in it."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def touches(module: str, forbidden: set[str]) -> set[str]:
    return {
        name for name in imports_of(module) if name.split(".")[0] in forbidden or name in forbidden
    }


PURE = ["webdav", "signedurl", "blockmath", "proxies", "config", "errors"]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io_frameworks(module: str) -> None:
    allowed_io = {"errors": {"httpx", "trio"}}  # the errno table knows their exceptions
    forbidden = {"pyfuse3", "trio", "httpx", "aiohttp"} - allowed_io.get(module, set())
    assert not touches(module, forbidden)


@pytest.mark.parametrize(
    "module",
    ["block_cache", "readahead", "namespace", "remote", "endpoints", "credentials", "reader"],
)
def test_nothing_below_the_fuse_layer_imports_pyfuse3(module: str) -> None:
    assert not touches(module, {"pyfuse3"})


@pytest.mark.parametrize("module", ["block_cache", "readahead"])
def test_the_cache_knows_nothing_of_http(module: str) -> None:
    assert not touches(module, {"httpx", "davfed_fuse.remote", "davfed_fuse.namespace"})


def test_endpoint_transfers_use_the_standard_library_not_httpx() -> None:
    assert not touches("endpoints", {"httpx", "davfed_fuse.remote", "davfed_fuse.block_cache"})


def test_the_mount_helper_never_loads_the_daemon() -> None:
    # mount.davfed forks and execs the daemon: forking inside trio is unsafe.
    assert not touches("launcher", {"trio", "httpx", "pyfuse3", "davfed_fuse.mount"})


def test_the_test_federation_is_not_imported_by_davfed() -> None:
    for path in PACKAGE.glob("*.py"):
        if path.stem != "cli":  # `davfed testfed` dispatches to it lazily
            assert not {n for n in imports_of(path.stem) if n.startswith("davfed_fuse.testfed")}
