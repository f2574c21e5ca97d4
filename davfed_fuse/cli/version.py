"""``davfed --version`` and ``mount.davfed -V``: davfed's version and those of the stack under it.

Owns: the version report. It imports trio, httpx and pyfuse3 to ask them their versions,
so it is imported only when a version is asked for.
"""

from __future__ import annotations

import sys

from davfed_fuse import __version__


def version_text() -> str:
    """davfed's version and those of the stack under it, one per line."""
    import httpx
    import trio

    lines = [f"davfed {__version__}"]
    try:
        import pyfuse3

        lines.append(f"pyfuse3 {getattr(pyfuse3, '__version__', '?')}")
    except ImportError as exc:  # pragma: no cover - pyfuse3 is a hard dependency
        lines.append(f"pyfuse3 unavailable ({exc})")
    from davfed_fuse.system.libfuse import libfuse_version

    lines.append(f"libfuse {libfuse_version()}")
    lines.append(f"trio {trio.__version__}")
    lines.append(f"httpx {httpx.__version__}")
    lines.append(f"python {sys.version.split()[0]}")
    return "\n".join(lines)
