"""A mount's live proxy list with CVMFS's failover rules (run-time side of ``proxy=``).

Owns: which proxy carries the next request (:meth:`ProxyList.current`), what a
failure through a proxy does to that choice (:meth:`ProxyList.fail`), the order
one request tries the proxies in (:meth:`ProxyList.attempt_order`), going back to
the first group after ``reset_after`` seconds (:func:`return_to_first_group`,
which probes before it switches), and which answers are the proxy's fault
(:func:`proxy_fault`). Its small API, :meth:`ProxyList.set`, :meth:`ProxyList.info`
and :meth:`ProxyList.rebalance`, is what ``davfed ctl MOUNTPOINT proxy
set|info|rebalance`` calls (as ``cvmfs_talk proxy ...`` does for CVMFS).
Must not import: pyfuse3, httpx, the cache, the daemon. The clock is injected.

The rules (CVMFS's ``download.cc``, fleet-anchors.md §1):

* ``;`` separates groups tried in order, ``|`` the members of one group (one is
  picked at random: load balancing), ``DIRECT`` is no proxy.
* A proxy failure (connect error, timeout, a body cut short or longer than
  promised, an answer with ``X-Squid-Error`` or ``Proxy-Status: ...error=``, a
  502/504 or a range that is not the range asked for) moves *every* later request
  to the next member of the group, then to the next group (wrapping round). One
  request tries each proxy at most once; when all failed, its error counts
  against the storage endpoint. An endpoint's own 4xx/5xx passed through the
  proxy is the endpoint's, not the proxy's.
* After a failover, the first group is tried again ``reset_after`` seconds later
  (CVMFS_PROXY_RESET_AFTER, 300 s) once a probe through it answers.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from davfed_fuse.net.proxies import Proxy, describe, first_working
from davfed_fuse.optionvalues import parse_proxy

log = logging.getLogger(__name__)

#: CVMFS_PROXY_RESET_AFTER's default.
PROXY_RESET_AFTER = 300.0


def parse_groups(spec: str) -> list[list[Proxy]]:
    """``a|b;c;DIRECT`` -> ``[[a, b], [c], [None]]``; ValueError with a reason if malformed."""
    parse_proxy(spec)  # the one syntax check (also refuses inline credentials)
    groups: list[list[Proxy]] = []
    seen: set[Proxy] = set()
    for text in spec.strip().split(";"):
        members = [m.strip() for m in text.split("|")]
        if not text.strip() or any(not m for m in members):
            raise ValueError(f"empty proxy in {spec!r}")
        group: list[Proxy] = []
        for member in members:
            proxy: Proxy = None if member == "DIRECT" else member.rstrip("/")
            if proxy not in seen:
                seen.add(proxy)
                group.append(proxy)
        if group:
            groups.append(group)
    return groups


def proxy_fault(status: int, header: Callable[[str], str | None]) -> str | None:
    """Why an answer that came through a proxy is the proxy's failure, or None if it is not.

    ``X-Squid-Error`` or ``Proxy-Status`` with ``error=`` (RFC 9209) is always the
    proxy's (CVMFS); so are 502 and 504, the gateway errors. Anything else (the
    endpoint's 403, 404, 500, 503 passed through) is the endpoint's answer.
    """
    squid = header("X-Squid-Error")
    if squid:
        return f"proxy error {status} {squid}"
    status_header = header("Proxy-Status") or ""
    if "error=" in status_header.replace(" ", ""):
        return f"proxy error {status} ({status_header})"
    if status in (502, 504):
        return f"proxy answered {status}"
    return None


class ProxyList:
    """The proxy groups of one mount and the one currently in use.

    ``clock``: monotonic seconds. Thread-safe enough for its use: the transport's
    worker threads call :meth:`current`, :meth:`attempt_order` and :meth:`fail`,
    which only replace whole values (the GIL makes each assignment atomic).
    """

    def __init__(
        self,
        spec: str,
        *,
        reset_after: float = PROXY_RESET_AFTER,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.reset_after = reset_after
        self._clock = clock
        self._rng = rng or random.Random()
        self.spec = ""
        self.groups: list[list[Proxy]] = []
        self._group = 0
        self._current: Proxy = None
        self._burned: frozenset[Proxy] = frozenset()  # failed members of the current group
        self._left_first_at: float | None = None  # when we left the first group
        self.failovers = 0
        self.failures: dict[str, int] = {}
        self.last_failure = ""
        self.set(spec)

    # -- the API of ``davfed ctl MOUNTPOINT proxy ...`` -------------------------------

    def set(self, spec: str) -> None:
        """Replace the list (``proxy set``) and start again at its first group.

        ValueError (and the list unchanged) if ``spec`` is malformed.
        """
        groups = parse_groups(spec)
        self.spec, self.groups = spec.strip(), groups
        self._enter(0)
        self._left_first_at = None
        log.info("proxy list %s; using %s", self.spec, describe(self._current))

    def info(self) -> dict[str, Any]:
        """What ``proxy info`` shows: the list, the proxy in use, failovers and failures."""
        since = self._left_first_at
        return {
            "list": self.spec,
            "groups": [[describe(p) for p in group] for group in self.groups],
            "current": describe(self._current),
            "group": self._group,
            "failovers": self.failovers,
            "failures": dict(self.failures),
            "last_failure": self.last_failure,
            "reset_after": self.reset_after,
            "first_group_retry_in": (
                None if since is None else max(0.0, since + self.reset_after - self._clock())
            ),
        }

    def rebalance(self) -> Proxy:
        """Pick a member of the current group at random again (``proxy rebalance``)."""
        self._burned = frozenset()
        self._current = self._rng.choice(self.groups[self._group])
        log.info("proxy rebalanced: using %s", describe(self._current))
        return self._current

    # -- what the transports ask ------------------------------------------------------

    def current(self) -> Proxy:
        """The proxy the next request goes through."""
        return self._current

    def all(self) -> list[Proxy]:
        return [p for group in self.groups for p in group]

    def attempt_order(self) -> list[Proxy]:
        """The proxies one request tries, each at most once: the current one first,
        then the rest of its group, then the following groups (wrapping round)."""
        order: list[Proxy] = [self._current]
        n = len(self.groups)
        for k in range(n):
            group = self.groups[(self._group + k) % n]
            rest = [p for p in group if p not in order]
            self._rng.shuffle(rest)
            order.extend(rest)
        return order

    def fail(self, proxy: Proxy, reason: str) -> None:
        """Count a failure against ``proxy``; if it is the one in use, move every
        later request on: to another member of its group, else to the next group."""
        name = describe(proxy)
        self.failures[name] = self.failures.get(name, 0) + 1
        self.last_failure = f"{name}: {reason}"
        if proxy != self._current:
            return  # another request already moved on
        burned = self._burned | {proxy}
        left = [p for p in self.groups[self._group] if p not in burned]
        if left:
            self._burned = burned
            self._current = self._rng.choice(left)
        else:
            self._enter((self._group + 1) % len(self.groups))
        self.failovers += 1
        if self._group != 0 and self._left_first_at is None:
            self._left_first_at = self._clock()
        log.warning(
            "proxy %s failed (%s): switching to %s",
            name,
            reason,
            describe(self._current),
            extra={"event.action": "proxy-failover"},
        )

    def use(self, proxy: Proxy) -> None:
        """Make ``proxy`` (a member of the list) the one in use, e.g. after a probe."""
        for index, group in enumerate(self.groups):
            if proxy in group:
                self._group, self._current, self._burned = index, proxy, frozenset()
                self._left_first_at = None if index == 0 else self._clock()
                return
        raise ValueError(f"{describe(proxy)} is not in the proxy list")

    def due_for_first_group(self) -> bool:
        """Whether the first group should be tried again now (``reset_after`` passed)."""
        since = self._left_first_at
        return since is not None and self._clock() - since >= self.reset_after

    def postpone_first_group(self) -> None:
        """The first group's probe failed: try again ``reset_after`` from now."""
        if self._left_first_at is not None:
            self._left_first_at = self._clock()

    def _enter(self, group: int) -> None:
        self._group = group
        self._burned = frozenset()
        self._current = self._rng.choice(self.groups[group])


async def choose_first_working(plist: ProxyList, probe: Callable[[Proxy], Awaitable[None]]) -> None:
    """At mount: probe the proxies in order and use the first through which the
    federation answers. Raises ProxiesFailed (naming every one) when none does."""
    plist.use(await first_working(plist.attempt_order(), probe))


async def return_to_first_group(
    plist: ProxyList,
    probe: Callable[[Proxy], Awaitable[None]],
    *,
    check_every: float = 5.0,
) -> None:
    """Forever: once ``reset_after`` has passed since a failover, probe the first
    group's members and go back to the first that answers (else wait another
    ``reset_after``). A mount that started on DIRECT because its proxy was down is
    not DIRECT for life."""
    while True:
        await trio.sleep(min(check_every, plist.reset_after))
        if not plist.due_for_first_group():
            continue
        members = list(plist.groups[0])
        random.shuffle(members)
        for proxy in members:
            try:
                await probe(proxy)
            except Exception as exc:
                log.info("proxy %s still failing: %s", describe(proxy), exc)
                continue
            plist.use(proxy)
            log.info("back to proxy %s after %g s", describe(proxy), plist.reset_after)
            break
        else:
            plist.postpone_first_group()
