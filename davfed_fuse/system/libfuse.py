"""What the installed libfuse is: its version, for ``--version`` and logs."""

from __future__ import annotations

import ctypes
import ctypes.util


def libfuse_version() -> str:
    """The runtime libfuse3 version, e.g. ``3.14.0``, or ``unknown``."""
    name = ctypes.util.find_library("fuse3") or "libfuse3.so.3"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return "unknown"
    func = getattr(lib, "fuse_pkgversion", None)
    if func is not None:
        func.restype = ctypes.c_char_p
        value = func()
        if isinstance(value, bytes):
            return value.decode()
    number = int(lib.fuse_version())
    return f"{number // 100}.{number % 100}"
