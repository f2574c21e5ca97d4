"""The inode table and metadata caches, against a fake federation and a fake clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from davfed_fuse.daemon.namespace import ROOT_INODE, Namespace
from davfed_fuse.errors import NotFound, UpstreamError
from davfed_fuse.net.webdav import RemoteEntry


def entry(path: str, is_dir: bool = False, size: int = 1) -> RemoteEntry:
    return RemoteEntry(path=path, is_dir=is_dir, size=size, mtime_ns=10**18, etag="e")


class FakeFederation:
    def __init__(self) -> None:
        self.tree = {
            "": entry("", True),
            "d": entry("d", True),
            "d/a": entry("d/a"),
            "d/b": entry("d/b", size=2),
        }
        self.calls: list[tuple[str, str]] = []
        self.gate: trio.Event | None = None  # when set: stats wait for it
        self.targets_forgotten: list[str] = []

    def forget_target(self, path: str) -> None:
        self.targets_forgotten.append(path)

    async def stat(self, path: str) -> RemoteEntry:
        self.calls.append(("stat", path))
        if self.gate is not None:
            await self.gate.wait()
        if path not in self.tree:
            raise NotFound(path)
        return self.tree[path]

    async def listdir(self, path: str) -> tuple[RemoteEntry | None, list[RemoteEntry]]:
        self.calls.append(("list", path))
        prefix = f"{path}/" if path else ""
        children = [
            e for p, e in self.tree.items() if p.startswith(prefix) and "/" not in p[len(prefix) :]
        ]
        return self.tree[path], [c for c in children if c.path != path]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(fed: FakeFederation, clock: Clock) -> Namespace:
    return Namespace(
        fed,  # type: ignore[arg-type]
        attr_timeout=60,
        dir_timeout=60,
        negative_timeout=10,
        clock=clock,
    )


async def test_lookup_counts_and_forget() -> None:
    ns = make(FakeFederation(), Clock())
    inode, _ = await ns.lookup("", "d")
    again, _ = await ns.lookup("", "d")
    assert inode == again != ROOT_INODE
    assert ns.lookup_count(inode) == 2
    ns.forget(inode, 1)
    assert ns.path(inode) == "d"
    ns.forget(inode, 1)
    with pytest.raises(NotFound):
        ns.path(inode)
    newer, _ = await ns.lookup("", "d")
    assert newer > inode, "a retired inode number is never reused"
    ns.forget(ROOT_INODE, 5)
    assert ns.path(ROOT_INODE) == ""


async def test_forgetting_everything_empties_the_inode_table() -> None:
    fed = FakeFederation()
    ns = make(fed, Clock())
    start = ns.tables()
    assert (start["inodes"], start["paths"], start["lookup_counts"]) == (1, 1, 0)
    # What readdir does: every entry counted as the kernel counts it, and the one
    # entry that did not fit in the reply released at once.
    children = await ns.listdir("d")
    inodes = [ns.remember(child.path) for child in children]
    assert ns.remember(children[-1].path) == inodes[-1]
    assert not ns.forget(inodes[-1], 1), "listed twice, released once: still known"
    refused = ns.remember("d/c-never-sent")
    assert ns.forget(refused, 1)
    looked_up, _ = await ns.lookup("", "d")
    assert ns.known_inodes() == 4
    retired = [ns.forget(inode, ns.lookup_count(inode)) for inode in [*inodes, looked_up]]
    assert retired == [True, True, True]
    tables = ns.tables()
    assert (tables["inodes"], tables["paths"], tables["lookup_counts"]) == (1, 1, 0)
    assert sorted(fed.targets_forgotten) == ["d", "d/a", "d/b", "d/c-never-sent"]
    assert ns.path(ROOT_INODE) == ""


async def test_metadata_tables_count_only_live_entries() -> None:
    clock = Clock()
    ns = make(FakeFederation(), clock)
    await ns.listdir("d")
    with pytest.raises(NotFound):
        await ns.stat("nope")
    tables = ns.tables()
    assert (tables["attr_cache"], tables["listing_cache"], tables["negative_cache"]) == (3, 1, 1)
    clock.now += 61
    tables = ns.tables()
    assert (tables["attr_cache"], tables["listing_cache"], tables["negative_cache"]) == (0, 0, 0)


async def test_a_listing_answers_later_stats() -> None:
    fed = FakeFederation()
    ns = make(fed, Clock())
    children = await ns.listdir("d")
    assert [c.name for c in children] == ["a", "b"]
    assert (await ns.stat("d/b")).size == 2
    with pytest.raises(NotFound):
        await ns.stat("d/zzz")
    assert fed.calls == [("list", "d")]


async def test_misses_are_remembered_for_the_negative_timeout() -> None:
    fed, clock = FakeFederation(), Clock()
    ns = make(fed, clock)
    for _ in range(3):
        with pytest.raises(NotFound):
            await ns.stat("new")
    assert fed.calls == [("stat", "new")]
    fed.tree["new"] = entry("new")
    clock.now = 11
    assert (await ns.stat("new")).path == "new"


async def test_attributes_expire() -> None:
    fed, clock = FakeFederation(), Clock()
    ns = make(fed, clock)
    await ns.stat("d/a")
    fed.tree["d/a"] = entry("d/a", size=99)
    assert (await ns.stat("d/a")).size == 1
    clock.now = 61
    assert (await ns.stat("d/a")).size == 99


async def test_concurrent_stats_share_one_request() -> None:
    fed = FakeFederation()
    fed.gate = trio.Event()
    ns = make(fed, Clock())
    results: list[RemoteEntry] = []

    async def one() -> None:
        results.append(await ns.stat("d/a"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()  # all ten asked before any answer
        fed.gate.set()
    assert len(results) == 10
    assert fed.calls == [("stat", "d/a")]


async def test_only_the_root_survives_an_unreachable_federation() -> None:
    fed, clock = FakeFederation(), Clock()
    ns = make(fed, clock)
    await ns.stat("")
    await ns.listdir("d")
    clock.now = 61

    async def down(path: str) -> RemoteEntry:
        raise UpstreamError("connection refused")

    fed.stat = down  # type: ignore[method-assign]
    assert (await ns.stat("")).is_dir
    with pytest.raises(UpstreamError):
        await ns.stat("d/b")
