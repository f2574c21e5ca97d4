"""fusermount3's reason, picked out of what libfuse and fusermount3 write to stderr."""

from __future__ import annotations

import os
import subprocess

import pytest

from davfed_fuse.system.fusermount import capture_stderr, fuse_reason


def test_the_reason_is_fusermount3s_line() -> None:
    text = (
        "fusermount3: option allow_other only allowed if 'user_allow_other' is set in "
        "/etc/fuse.conf\n"
    )
    assert fuse_reason(text) == (
        "option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf"
    )


def test_fusermount_lines_beat_libfuse_lines_and_repeats_are_dropped() -> None:
    text = "fuse: mount failed\nfusermount3: bad mount point /x: No such file\nfuse: mount failed\n"
    assert fuse_reason(text) == "bad mount point /x: No such file"
    assert fuse_reason("fuse: failed to open /dev/fuse: Permission denied\n" * 2) == (
        "failed to open /dev/fuse: Permission denied"
    )
    assert fuse_reason("something else\n") is None
    assert fuse_reason("") is None


def test_capture_catches_child_processes_and_passes_the_text_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with capture_stderr() as captured:
        subprocess.run(["sh", "-c", "echo 'fusermount3: from a child' >&2"], check=True)
        os.write(2, b"fuse: from us\n")
    assert captured.text == "fusermount3: from a child\nfuse: from us\n"
    assert fuse_reason(captured.text) == "from a child"
    err = capfd.readouterr().err
    assert err == captured.text  # nothing lost: copied to the real stderr
