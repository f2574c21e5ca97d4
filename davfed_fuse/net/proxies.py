"""HTTP proxy lists (squid) in CVMFS syntax, and choosing one that works.

Owns: ``proxy=`` lists such as ``http://a:3128|http://b:3128;http://c:3128;DIRECT``:
``;`` separates groups tried in order (failover), ``|`` separates proxies of one
group, tried in random order (load balancing), ``DIRECT`` means no proxy.
Without ``proxy=``, the environment's ``http_proxy``/``https_proxy``/``all_proxy``
and ``no_proxy`` apply (see :func:`proxy_spec`).
Must not import: pyfuse3, the namespace, the cache.

Squid caches only plain-HTTP GETs; HTTPS goes through CONNECT tunnels, which
a proxy forwards without caching.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: ``None`` stands for DIRECT (no proxy).
Proxy = str | None


def proxy_order(spec: str, rng: random.Random | None = None) -> list[Proxy]:
    """The proxies of ``spec`` in the order to try them: groups in order, each shuffled."""
    rng = rng or random.Random()
    order: list[Proxy] = []
    for group in spec.split(";"):
        members: list[Proxy] = [
            None if item.strip() == "DIRECT" else item.strip()
            for item in group.split("|")
            if item.strip()
        ]
        rng.shuffle(members)
        order.extend(m for m in members if m not in order)
    return order


def proxy_spec(configured: str | None, url: str, env: Mapping[str, str]) -> str | None:
    """The proxy list for ``url``: ``proxy=``, else the environment's, else None (DIRECT).

    The environment is read lowercase first, then uppercase (as curl and CVMFS
    do): ``https_proxy`` or ``http_proxy`` by the URL's scheme, then
    ``all_proxy``; ``no_proxy`` (host suffixes, or ``*``) and loopback hosts
    go direct.
    """
    if configured:
        return configured
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    names = (f"{parts.scheme}_proxy", "all_proxy")
    found = next(
        (value for name in names for key in (name, name.upper()) if (value := env.get(key))),
        None,
    )
    if not found or host in ("localhost", "::1") or host.startswith("127."):
        return None
    no_proxy = env.get("no_proxy", env.get("NO_PROXY", ""))
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    return found


def describe(proxy: Proxy) -> str:
    return "DIRECT" if proxy is None else proxy


async def first_working(
    candidates: list[Proxy], probe: Callable[[Proxy], Awaitable[None]]
) -> Proxy:
    """The first candidate through which ``probe`` succeeds.

    ``probe`` raises on failure; when every candidate fails, the last error is
    raised with the list of what was tried in its message.
    """
    errors: list[str] = []
    for proxy in candidates:
        try:
            await probe(proxy)
        except Exception as exc:
            log.warning("proxy %s does not work: %s", describe(proxy), exc)
            errors.append(f"{describe(proxy)}: {exc}")
            continue
        if errors:
            log.info("using proxy %s", describe(proxy))
        return proxy
    raise ProxiesFailed("no proxy works (" + "; ".join(errors) + ")")


class ProxiesFailed(Exception):
    """Every proxy of the list failed."""
