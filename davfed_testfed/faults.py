"""Fault injection: what a fault is, how control parameters become one, what it does to a request.

Owns: the :class:`Fault` value and its validation (:func:`make_fault`), the
per-endpoint :class:`FaultTable`, and :func:`effect_for`, the pure function
that decides what one request to an endpoint suffers. The endpoints
(``storage.py``, ``nginx.py``) carry the effect out.

Kinds (``path`` restricts a fault to one file, relative to the federation root):

============  ==================================================  ==============
kind          effect                                              parameters
============  ==================================================  ==============
``down``      the endpoint's port refuses connections             —
``slow``      every response waits ``delay`` s before its headers  delay, path
``stall``     the body stops after ``after`` bytes and hangs      after, path
``cut``       the connection is closed after ``after`` bytes      after, path
``status``    every request answers ``status`` (default 503)      status, path
``delete``    the file answers 404 on this endpoint               path (needed)
``resize``    the file has ``size`` bytes here (default: half)    size, path (needed)
``validity``  new signed URLs are valid ``seconds`` s             seconds
``digest``    a ``candochecksum`` endpoint reports a wrong         path
              ``Digest`` (the right one with bits flipped)
``throttle``  bodies are sent at ``rate`` bytes/s at most          rate, path
``corrupt``   the file has its size but other bytes here (one     path (needed)
              byte in every MiB flipped)
============  ==================================================  ==============

Must not import: aiohttp.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

FaultKind = Literal[
    "down",
    "slow",
    "stall",
    "cut",
    "status",
    "delete",
    "resize",
    "validity",
    "digest",
    "throttle",
    "corrupt",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

#: Faults the nginx endpoints hand to the Python fault server (``proxy_pass``).
PROXIED_KINDS = frozenset({"slow", "stall", "cut", "status", "throttle"})
_PATH_REQUIRED = frozenset({"delete", "resize", "corrupt"})
_NO_PATH = frozenset({"down", "validity"})
_PARAMS: dict[str, frozenset[str]] = {
    "down": frozenset(),
    "slow": frozenset({"delay"}),
    "stall": frozenset({"after"}),
    "cut": frozenset({"after"}),
    "status": frozenset({"status"}),
    "delete": frozenset(),
    "resize": frozenset({"size"}),
    "validity": frozenset({"seconds"}),
    "digest": frozenset(),
    "throttle": frozenset({"rate"}),
    "corrupt": frozenset(),
}


class FaultError(ValueError):
    """A fault request that makes no sense (unknown kind, bad parameter)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault on one endpoint."""

    kind: FaultKind
    path: str | None = None
    delay: float = 0.0
    after: int = 0
    status: int = 503
    size: int | None = None
    seconds: int = 0
    rate: int = 0  # bytes per second (throttle)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(params: Mapping[str, object], name: str, kind: type[int] | type[float]) -> Any:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultError(f"{name} must be a number, not {value!r}")
    try:
        number = kind(value)
    except ValueError:
        raise FaultError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise FaultError(f"{name} must not be negative")
    return number


def make_fault(kind: str, params: Mapping[str, object]) -> Fault:
    """Validate a fault request.

    Raises:
        FaultError: unknown kind, unknown or malformed parameter, missing path.
    """
    if kind not in FAULT_KINDS:
        raise FaultError(f"unknown fault kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
    allowed = _PARAMS[kind] | ({"path"} if kind not in _NO_PATH else frozenset())
    unknown = set(params) - allowed
    if unknown:
        raise FaultError(f"fault {kind!r} takes no parameter {', '.join(sorted(unknown))}")
    path: str | None = None
    if "path" in params:
        raw = params["path"]
        if not isinstance(raw, str) or not raw.strip("/"):
            raise FaultError("path must be a non-empty relative path")
        path = raw.strip("/")
    if kind in _PATH_REQUIRED and path is None:
        raise FaultError(f"fault {kind!r} needs a path")
    fields: dict[str, Any] = {}
    if "delay" in params:
        fields["delay"] = _number(params, "delay", float)
    if "after" in params:
        fields["after"] = _number(params, "after", int)
    if "status" in params:
        status = _number(params, "status", int)
        if not 100 <= status <= 599:
            raise FaultError(f"status must be an HTTP status, not {status}")
        fields["status"] = status
    if "size" in params:
        fields["size"] = _number(params, "size", int)
    if "seconds" in params:
        fields["seconds"] = _number(params, "seconds", int)
    if "rate" in params:
        fields["rate"] = _number(params, "rate", int)
        if fields["rate"] <= 0:
            raise FaultError("rate must be positive")
    elif kind == "throttle":
        raise FaultError("fault 'throttle' needs a rate")
    return Fault(cast(FaultKind, kind), path, **fields)


@dataclass(frozen=True, slots=True)
class Effect:
    """What the faults of an endpoint do to one request for one path."""

    delay: float = 0.0
    status: int | None = None
    deleted: bool = False
    resized: bool = False
    stall_after: int | None = None
    cut_after: int | None = None
    bad_digest: bool = False
    rate: int | None = None  # bytes per second at most

    @property
    def is_clean(self) -> bool:
        return self == NO_EFFECT


NO_EFFECT = Effect()


def effect_for(faults: Iterable[Fault], relpath: str) -> Effect:
    """Combine the faults that apply to ``relpath`` (endpoint-wide or for that path)."""
    delay = 0.0
    status: int | None = None
    deleted = resized = bad_digest = False
    stall_after: int | None = None
    cut_after: int | None = None
    rate: int | None = None
    for fault in faults:
        if fault.path is not None and fault.path != relpath:
            continue
        if fault.kind == "slow":
            delay = max(delay, fault.delay)
        elif fault.kind == "status":
            status = fault.status
        elif fault.kind == "delete":
            deleted = True
        elif fault.kind in ("resize", "corrupt"):
            resized = True  # an altered copy is served
        elif fault.kind == "stall":
            stall_after = fault.after
        elif fault.kind == "cut":
            cut_after = fault.after
        elif fault.kind == "digest":
            bad_digest = True
        elif fault.kind == "throttle":
            rate = fault.rate if rate is None else min(rate, fault.rate)
    return Effect(delay, status, deleted, resized, stall_after, cut_after, bad_digest, rate)


def resized_content(original: bytes, size: int) -> bytes:
    """The altered replica: the original truncated, or extended with a marker pattern."""
    if size <= len(original):
        return original[:size]
    pad = b"testfed-resized\n"
    extra = size - len(original)
    return original + (pad * (extra // len(pad) + 1))[:extra]


class FaultTable:
    """The faults active on one endpoint; the only mutable fault state."""

    def __init__(self) -> None:
        self._faults: dict[tuple[str, str | None], Fault] = {}

    def add(self, fault: Fault) -> None:
        """Add ``fault``, replacing one of the same kind on the same path."""
        self._faults[(fault.kind, fault.path)] = fault

    def clear(self) -> None:
        self._faults.clear()

    def faults(self) -> list[Fault]:
        return list(self._faults.values())

    def has(self, kind: str) -> bool:
        return any(f.kind == kind for f in self._faults.values())

    def validity(self) -> int | None:
        """The shortened signature validity, if a ``validity`` fault is active."""
        for fault in self._faults.values():
            if fault.kind == "validity":
                return fault.seconds
        return None

    def effect(self, relpath: str) -> Effect:
        return effect_for(self._faults.values(), relpath)
