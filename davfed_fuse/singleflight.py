"""Single flight: concurrent calls for one key share one run of the work.

Owns: the one implementation of "the first caller does the work, the others
wait for its result" (metadata lookups, redirects, block fetches).
Must not import: anything of davfed (a pure trio helper).

The leader's result or exception is handed to every waiter. A leader that is
cancelled hands nothing: the first waiter to wake becomes the new leader, so a
cancelled reader never fails the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Concurrent :meth:`run` calls for one key share one run of the coroutine."""

    def __init__(self) -> None:
        self._running: dict[K, tuple[trio.Event, list[T | BaseException]]] = {}

    def __len__(self) -> int:
        """How many keys have work in flight now."""
        return len(self._running)

    def __contains__(self, key: object) -> bool:
        return key in self._running

    async def run(self, key: K, func: Callable[[], Awaitable[T]]) -> T:
        while (running := self._running.get(key)) is not None:
            event, box = running
            await event.wait()
            if box:
                result = box[0]
                if isinstance(result, BaseException):
                    raise result
                return result
            # The leader was cancelled: try again, perhaps as the new leader.
        event, box = trio.Event(), []
        self._running[key] = (event, box)
        try:
            value = await func()
        except Exception as exc:
            box.append(exc)
            raise
        else:
            box.append(value)
            return value
        finally:
            del self._running[key]
            event.set()
