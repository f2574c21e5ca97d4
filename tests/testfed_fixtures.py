"""Pytest fixtures for tests that need a federation (import them, or list this module in
``pytest_plugins``).

* ``testfed_tree`` (session): a small generated tree; ``testfed_files`` maps each file's
  relative path to its bytes (names with spaces, ``#``, ``?``, ``%`` and non-ASCII included).
* ``testfed_session`` (session): one federation over that tree, 3 nginx ``dav``
  endpoints, health checked every 0.2 s (max latency 0.5 s).
* ``testfed`` (function): the same federation, with every fault cleared and every
  endpoint back online after the test, so tests may inject faults freely.
* ``make_testfed`` (function): ``make_testfed(data_dir, **options)`` starts a federation
  of its own (options as :class:`davfed_testfed.TestFederation`); all are stopped
  after the test.
* ``testfed_pki`` (session): a :class:`davfed_testfed.pki.TestPKI` (CA, hashed CA
  dir, host/user/VOMS certificates, proxies, tokens) in a temporary directory; skips
  the test when apache2/mod_gridsite, grid-proxy-init, voms-proxy-fake, openssl or
  ``cryptography`` are missing (``HTTPS_MISSING`` says which).
* ``https_testfed_session`` (session): the tree behind Apache (``https=True``) with
  that PKI and no rules; ``https_testfed`` (function): the same, with its rules reset
  to ``HTTPS_RULES`` before and to none after each test.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from davfed_testfed import TestFederation

if TYPE_CHECKING:
    from davfed_testfed.pki import TestPKI

#: Names a federation must carry through percent-encoding unchanged.
SPECIAL_NAMES = (
    "names/with space.txt",
    "names/hash#name.txt",
    "names/question?mark.txt",
    "names/percent%41.txt",
    "names/ünïcødé ☃.txt",
)


def tree_files() -> dict[str, bytes]:
    """The generated tree: relative path → content (deterministic)."""
    rng = random.Random(20240501)
    files: dict[str, bytes] = {
        "hello.txt": b"hello, federation\n",
        "empty.bin": b"",
        "small/one.bin": b"\x01",
        "data/block.bin": rng.randbytes((1 << 20) + 7),
        "data/big.bin": rng.randbytes((4 << 20) + 3),
        "deep/a/b/c/leaf.txt": b"leaf\n",
    }
    for name in SPECIAL_NAMES:
        files[name] = f"content of {name}\n".encode()
    for i in range(30):
        files[f"many/f{i:03d}.txt"] = f"{i}\n".encode()
    return files


def write_tree(root: Path) -> dict[str, bytes]:
    """Write :func:`tree_files` under ``root`` (plus an empty directory ``empty-dir``)."""
    files = tree_files()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "empty-dir").mkdir(exist_ok=True)
    return files


@pytest.fixture(scope="session")
def testfed_files() -> dict[str, bytes]:
    return tree_files()


@pytest.fixture(scope="session")
def testfed_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("testfed-tree")
    write_tree(root)
    return root


@pytest.fixture(scope="session")
def testfed_session(testfed_tree: Path) -> Iterator[TestFederation]:
    with TestFederation(testfed_tree, endpoints=3, health_period=0.2, max_latency=0.5) as fed:
        yield fed


def reset_faults(fed: TestFederation) -> None:
    """Clear every fault and wait until the federation sees all endpoints online again."""
    fed.clear_faults()
    for endpoint in fed.endpoints:
        fed.wait_health(endpoint.index, online=True, timeout=10)


@pytest.fixture
def testfed(testfed_session: TestFederation) -> Iterator[TestFederation]:
    yield testfed_session
    reset_faults(testfed_session)


@pytest.fixture
def make_testfed() -> Iterator[Callable[..., TestFederation]]:
    started: list[TestFederation] = []

    def make(data_dir: Path, **options: Any) -> TestFederation:
        fed = TestFederation(data_dir, **options)
        started.append(fed)
        return fed.start()

    try:
        yield make
    finally:
        for fed in started:
            fed.stop()


# --- HTTPS mode -----------------------------------------------------------------------------


def https_missing() -> str | None:
    """What the HTTPS mode lacks on this machine (None: nothing)."""
    if importlib.util.find_spec("cryptography") is None:
        return "the cryptography package is not installed"
    tools = {
        "apache2": "apache2",
        "grid-proxy-init": "globus-proxy-utils",
        "voms-proxy-fake": "voms-clients",
        "openssl": "openssl",
    }
    for tool, package in tools.items():
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed (Debian package {package})"
    for module, package in (("mod_ssl.so", "apache2"), ("mod_gridsite.so", "gridsite")):
        if not Path("/usr/lib/apache2/modules", module).exists():
            return f"{module} not installed (Debian package {package})"
    return None


HTTPS_MISSING = https_missing()
needs_https = pytest.mark.skipif(HTTPS_MISSING is not None, reason=str(HTTPS_MISSING))

#: Rules of ``https_testfed``:
#: * ``/belle/production*`` (a wildcard; alice) reads and lists everything;
#: * ``/belle`` (exactly; alice and bob) reads hello.txt and many/, but lists nothing;
#: * Mallory's DN reads small/ but lists nothing;
#: * clients with no FQANs at all (plain proxies, anonymous, tokens without groups)
#:   read and list deep/.
HTTPS_RULES = (
    "glb.allowgroups[]: /belle/production* /myfed/ rl",
    "glb.allowgroups[]: /belle /myfed/hello.txt r",
    "glb.allowgroups[]: /belle /myfed/many/ r",
    'glb.allowusers[]: "/DC=org/DC=test/CN=Mallory" /myfed/small/ r',
    'glb.allowgroups[]: "" /myfed/deep/ rl',
)


@pytest.fixture(scope="session")
def testfed_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    if HTTPS_MISSING is not None:
        pytest.skip(HTTPS_MISSING)
    from davfed_testfed.pki import TestPKI

    return TestPKI.create(tmp_path_factory.mktemp("testfed-pki"))


@pytest.fixture(scope="session")
def https_testfed_session(testfed_tree: Path, testfed_pki: TestPKI) -> Iterator[TestFederation]:
    with TestFederation(
        testfed_tree,
        endpoints=2,
        health_period=0.2,
        max_latency=0.5,
        https=True,
        pki=testfed_pki,
        auth_rules=[],
    ) as fed:
        yield fed


@pytest.fixture
def https_testfed(https_testfed_session: TestFederation) -> Iterator[TestFederation]:
    https_testfed_session.set_auth_rules(HTTPS_RULES)
    yield https_testfed_session
    https_testfed_session.set_auth_rules([])
    https_testfed_session.clear_faults()
