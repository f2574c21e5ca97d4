"""Imports go one way (docs: style guide point 1): checked from the source, not by convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "davfed_fuse"


def imports_of(module: str) -> set[str]:
    """Top-level names of everything ``davfed_fuse/<module>.py`` imports, anywhere in it."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
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


PURE = [
    "net.webdav",
    "net.signedurl",
    "cache.blockmath",
    "net.proxies",
    "config",
    "errors",
    "redaction",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io_frameworks(module: str) -> None:
    allowed_io = {"errors": {"httpx", "trio"}}  # the errno table knows their exceptions
    forbidden = {"pyfuse3", "trio", "httpx", "aiohttp"} - allowed_io.get(module, set())
    assert not touches(module, forbidden)


@pytest.mark.parametrize(
    "module",
    [
        "cache.blockcache",
        "daemon.filereader",
        "daemon.namespace",
        "net.federation",
        "net.transport",
        "net.credentials",
        "daemon.openfiles",
    ],
)
def test_nothing_below_the_fuse_layer_imports_pyfuse3(module: str) -> None:
    assert not touches(module, {"pyfuse3"})


@pytest.mark.parametrize("module", ["cache.blockcache", "daemon.filereader"])
def test_the_cache_knows_nothing_of_http(module: str) -> None:
    assert not touches(
        module, {"httpx", "davfed_fuse.net.federation", "davfed_fuse.daemon.namespace"}
    )


def test_endpoint_transfers_use_the_standard_library_not_httpx() -> None:
    assert not touches(
        "net.transport", {"httpx", "davfed_fuse.net.federation", "davfed_fuse.cache.blockcache"}
    )


def test_the_mount_helper_never_loads_the_daemon() -> None:
    # mount.davfed forks and execs the daemon: forking inside trio is unsafe.
    assert not touches("cli.launch", {"trio", "httpx", "pyfuse3", "davfed_fuse.daemon.main"})


def test_the_test_federation_is_not_imported_by_davfed() -> None:
    for path in PACKAGE.rglob("*.py"):
        module = str(path.relative_to(PACKAGE).with_suffix("")).replace("/", ".")
        if module != "cli.main":  # `davfed testfed` dispatches to it lazily
            assert not {n for n in imports_of(module) if n.startswith("davfed_testfed")}
