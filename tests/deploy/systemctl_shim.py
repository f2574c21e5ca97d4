"""``systemctl`` for the cloud-init test: ``daemon-reload`` and ``[enable --now|start]
davfed@INSTANCE.service``, carried out from the unit file by :class:`UnitRun` (this
machine has no systemd as PID 1). Returns once the daemon sent READY=1 (0) or failed (1).

Environment: SHIM_ROOT (the redirected /), SHIM_LOG (one line per call).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.deploy.unitrun import UnitRun


def main(argv: list[str]) -> int:
    root = Path(os.environ["SHIM_ROOT"])
    with open(os.environ["SHIM_LOG"], "a") as log:
        log.write("systemctl " + " ".join(argv) + "\n")
    if argv == ["daemon-reload"]:
        return 0
    name = argv[-1]
    if argv[:-1] not in (["start"], ["enable", "--now"]) or not name.startswith("davfed@"):
        print(f"systemctl shim: not supported: {argv}", file=sys.stderr)
        return 1
    instance = name.removeprefix("davfed@").removesuffix(".service")
    run = UnitRun(
        root / "units" / "davfed@.service",
        root / instance.replace("-", "/"),
        env_dir=root / "etc" / "davfed",
        cache_root=root / "var" / "cache",
        instance=instance,
    )
    run.start()
    got = run.messages("READY=1", timeout=90)
    run.notify.close()
    return 0 if any("READY=1" in m.splitlines() for m in got) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
