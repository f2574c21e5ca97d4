"""``davfed help options|man``: rendered from the option table, so every option is there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from davfed_fuse.cli.help import man_page, options_text
from davfed_fuse.optiontable import OPTIONS, Kind


def test_every_option_is_in_the_table_and_the_manual() -> None:
    text, man = options_text(), man_page()
    for name, rule in OPTIONS.items():
        shown = f"{name}=VALUE" if rule.kind is Kind.VALUE else name
        assert f"  {shown} " in text, name
        assert f"\\fB{shown.replace('-', chr(92) + '-')}\\fR" in man, name


def test_defaults_come_from_config() -> None:
    text = options_text()
    assert "cache_size=VALUE" in text
    line = next(line for line in text.splitlines() if line.lstrip().startswith("cache_size="))
    assert line.endswith("[default: 20G]")
    nosuid = next(line for line in text.splitlines() if line.lstrip().startswith("nosuid "))
    assert nosuid.count("default") == 1 and "(default)" in nosuid  # said once


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed")
def test_the_manual_renders_without_warnings(tmp_path: Path) -> None:
    page = tmp_path / "davfed.8"
    page.write_text(
        subprocess.run(
            [sys.executable, "-m", "davfed_fuse", "help", "man"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    result = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "cache_size=VALUE" in result.stdout


def test_an_unknown_topic_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "davfed_fuse", "help", "nonsense"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "unknown topic" in result.stderr
