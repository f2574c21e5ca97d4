"""Helpers of the operations tests: run ``davfed status|ctl`` as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.mounting import REPO

DAVFED = REPO / ".venv" / "bin" / "davfed"
OPERATIONS_MD = REPO / "docs" / "operations.md"


def davfed(*args: str, user: str | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``davfed ARGS`` (as ``user`` via setpriv); the result and how long it took."""
    command = [str(DAVFED), *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *command]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def status(mnt: Path) -> dict[str, Any]:
    result, _ = davfed("status", str(mnt), "--json")
    assert result.returncode in (0, 3), result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def doc_table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` in docs/operations.md (cells, unquoted)."""
    text = OPERATIONS_MD.read_text()
    section = text[text.index(heading) :]
    rows = []
    started = False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if set("".join(cells)) <= set("-"):
                continue
            rows.append([c.replace("\\|", "|").strip("`") for c in cells])
        elif started:
            break
    return rows[1:]  # without the header
