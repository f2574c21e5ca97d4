"""Configuration files: format, layering, errors that name FILE:LINE, and ``davfed config show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from davfed_fuse.config import GiB, user_cache_dir
from davfed_fuse.configfile import CONFIG_DIR_ENV, config_paths, parse_text
from davfed_fuse.errors import UsageError
from davfed_fuse.options import build_config
from davfed_fuse.optionvalues import format_min_free, parse_min_free

URL = "https://dynafed.example/belle"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty configuration directory that stands in for /etc/davfed."""
    root = tmp_path / "etc-davfed"
    (root / "conf.d").mkdir(parents=True)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(root))
    return root


def error_of(etc: Path, *options: str, mountpoint: str = "/mnt") -> str:
    with pytest.raises(UsageError) as info:
        build_config(URL, mountpoint, options)
    return str(info.value)


def test_layers_apply_in_order(etc: Path) -> None:
    (etc / "davfed.conf").write_text(
        "cache_size = 1G\ntimeout = 5\nretries = 1\nmax_connections=2\n"
    )
    (etc / "conf.d" / "20-b.conf").write_text("timeout = 7\n[/mnt]\nretries = 4\n")
    (etc / "conf.d" / "10-a.conf").write_text(
        f"cache_size = 2G\ntimeout = 6\n[{URL}/]\nretries = 3\nmax_connections = 9\n"
    )
    (etc / "conf.d" / "30-c.conf").write_text(
        "[/other]\nretries = 9\n[https://other.example/]\nmax_connections = 1\n"
    )
    (etc / "conf.d" / "notes.txt").write_text("not a conf file: never read\n")
    triage = build_config(URL, "/mnt/", ["max_connections=12"])
    config, origins = triage.config, triage.origins
    d = etc / "conf.d"
    assert triage.files == (etc / "davfed.conf", d / "10-a.conf", d / "20-b.conf", d / "30-c.conf")
    # Keys outside sections: later files win (conf.d after davfed.conf, by name).
    assert config.cache_size == 2 * GiB and origins["cache_size"] == f"{d / '10-a.conf'}:1"
    assert config.timeout == 7 and origins["timeout"] == f"{d / '20-b.conf'}:1"
    # [URL] beats every file's global keys; [/mountpoint] beats [URL].
    assert config.retries == 4 and origins["retries"] == f"{d / '20-b.conf'}:3"
    # -o beats everything.
    assert config.max_connections == 12 and origins["max_connections"] == "-o"
    assert "block_size" not in origins  # a default
    # Only -o reaches the daemon's command line: it reads the files itself.
    assert triage.forwarded == ("max_connections=12",)


def test_config_option_replaces_the_main_file_but_not_conf_d(etc: Path, tmp_path: Path) -> None:
    (etc / "davfed.conf").write_text("cache_size = 1G\nretries = 1\n")
    (etc / "conf.d" / "50.conf").write_text("retries = 5\n")
    mine = tmp_path / "belle.conf"
    mine.write_text("cache_size = 3G\nretries = 2\n[/mnt]\nretries = 6\n")
    triage = build_config(URL, "/mnt", [f"config={mine}"])
    assert triage.files == (mine, etc / "conf.d" / "50.conf")
    assert triage.config.cache_size == 3 * GiB
    assert triage.config.retries == 6  # its section beats conf.d's global key
    assert triage.forwarded == (f"config={mine}",)


def test_missing_files_are_fine_but_a_missing_config_file_is_an_error(
    etc: Path, tmp_path: Path
) -> None:
    (etc / "conf.d").rmdir()
    assert build_config(URL, "/mnt").files == ()
    assert error_of(etc, f"config={tmp_path / 'nope.conf'}") == (
        f"config file {tmp_path / 'nope.conf'} does not exist"
    )
    assert "is not a file" in error_of(etc, f"config={tmp_path}")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("cache_size = 1G\ncache_sise = 2G\n", 2, "unknown option 'cache_sise'"),
        ("# comment\n\ncache_size = lots\n", 3, "bad value for 'cache_size': 'lots'"),
        ("timeout = -1\n", 1, "must be more than 0 seconds"),
        ("log_level = loud\n", 1, "bad value for 'log_level'"),
        ("cache_dir = cache\n", 1, "must be an absolute path"),
        ("cache_dir\n", 1, "'cache_dir' needs a value"),
        ("cache_dir =\n", 1, "'cache_dir' needs a value"),
        ("allow_other = maybe\n", 1, "flag 'allow_other' takes no value but yes or no"),
        ("debug = no\n", 1, "flag 'debug' takes no value but yes"),
        ("_netdev\n", 1, "'_netdev' has no effect in a configuration file"),
        ("x-systemd.automount\n", 1, "fstab/systemd word; it belongs in fstab"),
        ("fsname = x\n", 1, "has no effect in a configuration file"),
        ("token = abc\n", 1, "'token' is not accepted: secrets are never accepted inline"),
        ("config = /etc/other.conf\n", 1, "config= is not read from a configuration file"),
        ("env.BEARER_TOKEN = abc\n", 1, "would expose a secret"),
        ("[dynafed]\n", 1, "section [dynafed] must name a mountpoint"),
        ("[/mnt\n", 1, "a section header is [/mountpoint] or [URL]"),
        ("cache size = 1G\n", 1, "expected KEY = VALUE or a flag"),
        # A section for another mount is checked too: a typo is never silent.
        ("[/elsewhere]\nretires = 3\n", 2, "unknown option 'retires'"),
    ],
)
def test_errors_name_file_and_line(etc: Path, text: str, line: int, message: str) -> None:
    conf = etc / "conf.d" / "50-site.conf"
    conf.write_text(text)
    error = error_of(etc)
    assert error.startswith(f"{conf}:{line}: "), error
    assert message in error
    assert "\n" not in error


def test_unknown_keys_are_errors_even_when_sloppy(etc: Path) -> None:
    (etc / "davfed.conf").write_text("bogus = 1\n")
    with pytest.raises(UsageError, match=r"davfed\.conf:1: unknown option 'bogus'"):
        build_config(URL, "/mnt", sloppy=True)


def test_unreadable_and_binary_files_are_errors(etc: Path) -> None:
    conf = etc / "davfed.conf"
    conf.write_bytes(b"\xff\xfe\x00")
    assert error_of(etc) == f"{conf}: not a UTF-8 text file"


def test_flags_words_quotes_and_env(etc: Path) -> None:
    (etc / "davfed.conf").write_text(
        "allow_other\nnosuid = no\nnoexec = yes\n"
        'proxy = "http://a:3128|http://b:3128;DIRECT"\n'
        "cache-size = 2G\n"
        "env.HTTPS_PROXY = http://squid:3128\n"
        "; a comment in the ini style\n"
    )
    (etc / "conf.d" / "90.conf").write_text("allow_other = no\nallow_root = yes\n")
    triage = build_config(URL, "/mnt", ["env.X509_CERT_DIR=/c"])
    config = triage.config
    assert config.allow_other is False and config.allow_root is True
    assert config.nosuid is False and config.noexec is True
    assert config.proxy == "http://a:3128|http://b:3128;DIRECT"
    assert config.cache_size == 2 * GiB
    assert config.env == (("HTTPS_PROXY", "http://squid:3128"), ("X509_CERT_DIR", "/c"))
    assert triage.origins["env.HTTPS_PROXY"] == f"{etc / 'davfed.conf'}:6"
    assert triage.forwarded == ("env.X509_CERT_DIR=/c",)


def test_flags_with_values_stay_errors_in_o(etc: Path) -> None:
    assert "takes no value" in error_of(etc, "allow_other=yes")


def test_checks_across_options_see_the_files(etc: Path) -> None:
    (etc / "davfed.conf").write_text("allow_other\n")
    assert "exclude each other" in error_of(etc, "allow_root")


def test_sections_match_normalised_names() -> None:
    parsed = parse_text("[/dynafed//belle/]\n[https://h.example/x/]\nretries=1\n", "f")
    assert [s.name for s in parsed.sections] == ["/dynafed/belle", "https://h.example/x"]
    assert parsed.sections[1].settings[0].origin == "f:3"


def test_conf_d_is_read_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    for name in ["b.conf", "a.conf", "10.conf", "z.conf.rpmsave", "c.conf"]:
        (tmp_path / "conf.d" / name).write_text("")
    (tmp_path / "conf.d" / "d.conf").mkdir()
    names = [p.name for p in config_paths(tmp_path)]
    assert names == ["10.conf", "a.conf", "b.conf", "c.conf"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("5%", (0, 5.0)), ("0.5%", (0, 0.5)), ("2G", (2 * GiB, 0.0)), ("0", (0, 0.0))],
)
def test_cache_min_free_values(text: str, value: tuple[int, float]) -> None:
    assert parse_min_free(text) == value
    assert parse_min_free(format_min_free(value)) == value


@pytest.mark.parametrize("text", ["60%", "-1%", "x%", "lots"])
def test_bad_cache_min_free(text: str) -> None:
    with pytest.raises(ValueError):
        parse_min_free(text)


def test_per_user_cache_dir() -> None:
    assert user_cache_dir({"XDG_CACHE_HOME": "/x/cache", "HOME": "/h"}) == Path("/x/cache/davfed")
    assert user_cache_dir({"XDG_CACHE_HOME": "rel", "HOME": "/h"}) == Path("/h/.cache/davfed")
    assert user_cache_dir({"HOME": "/h"}) == Path("/h/.cache/davfed")


# --- davfed config show ---------------------------------------------------------------


def show(etc: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "davfed_fuse", "config", "show", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, CONFIG_DIR_ENV: str(etc)},
        check=False,
    )


def test_config_show_prints_values_and_origins(etc: Path) -> None:
    (etc / "davfed.conf").write_text("cache_size = 50G\n")
    (etc / "conf.d" / "10-site.conf").write_text(
        f"[{URL}]\nlog_level = debug\n"
        "env.HTTPS_PROXY = http://user:hunter2@squid:3128\n"
        "[/dynafed/belle]\ncache_min_free = 2G\n"
    )
    result = show(etc, URL, "/dynafed/belle", "-o", "timeout=12,allow_other")
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    conf_d = etc / "conf.d" / "10-site.conf"
    assert lines["cache_size"].endswith(f"# {etc / 'davfed.conf'}:1")
    assert "= 50G " in lines["cache_size"]
    assert "= debug " in lines["log_level"] and lines["log_level"].endswith(f"# {conf_d}:2")
    assert "= 2G " in lines["cache_min_free"] and lines["cache_min_free"].endswith(f"{conf_d}:5")
    assert "= 12 " in lines["timeout"] and lines["timeout"].endswith("# -o")
    assert "= yes " in lines["allow_other"] and lines["allow_other"].endswith("# -o")
    assert lines["retries"].endswith("# default") and "= 3 " in lines["retries"]
    assert "hunter2" not in result.stdout  # a password in a proxy URL is never printed
    assert "[REDACTED]" in lines["env.HTTPS_PROXY"]


def test_config_show_json_and_url_only(etc: Path) -> None:
    (etc / "davfed.conf").write_text("[/dynafed/belle]\nretries = 7\n")
    result = show(etc, URL, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["url"] == URL and record["mountpoint"] is None
    # Without a mountpoint, its sections do not apply.
    assert record["options"]["retries"] == {"value": "3", "origin": "default"}


def test_config_show_with_a_bad_file_is_one_line(etc: Path) -> None:
    (etc / "conf.d" / "10.conf").write_text("\n\nreadahead = far\n")
    result = show(etc, URL, "/dynafed/belle")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"davfed: {etc / 'conf.d' / '10.conf'}:3: bad value for 'readahead': 'far' "
        "expected a size such as 4096, 512M, 20G"
    )


def test_config_show_of_a_mountpoint_without_a_url(etc: Path, tmp_path: Path) -> None:
    result = show(etc, str(tmp_path))
    assert result.returncode == 1
    assert "give the URL as well" in result.stderr
