"""The option triage table: every kind of option, valid and invalid."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from davfed_fuse.config import Config, GiB, MiB
from davfed_fuse.configfile import CONFIG_DIR_ENV
from davfed_fuse.errors import UsageError
from davfed_fuse.options import build_config, join_options, split_options, validate_url
from davfed_fuse.optiontable import OPTIONS, Kind
from davfed_fuse.optionvalues import format_size, parse_size

URL = "https://dynafed.example/belle"


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the machine's /etc/davfed: an empty configuration directory."""
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "etc-davfed"))


DEFAULT = Config(url=URL, mountpoint=Path("/mnt"))


def cfg(*options: str, sloppy: bool = False) -> Config:
    return build_config(URL, "/mnt", options, sloppy=sloppy).config


def usage_error(*options: str) -> str:
    with pytest.raises(UsageError) as info:
        build_config(URL, "/mnt", options)
    return str(info.value)


# --- splitting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("ro", ["ro"]),
        ("ro,allow_other,uid=1000", ["ro", "allow_other", "uid=1000"]),
        ('proxy="http://a:3128;DIRECT",ro', ["proxy=http://a:3128;DIRECT", "ro"]),
        ('comment="a,b",ro', ["comment=a,b", "ro"]),
        ("log_file='/var/log/x,y.log'", ["log_file=/var/log/x,y.log"]),
        ('"cache_dir=/a,b"', ["cache_dir=/a,b"]),
        (",,ro,,", ["ro"]),
        ("", []),
    ],
)
def test_split_options(text: str, items: list[str]) -> None:
    assert split_options(text) == items


def test_unterminated_quote_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unterminated"):
        split_options('comment="abc,ro')


@pytest.mark.parametrize(
    "items", [["ro", "uid=1"], ["comment=a,b", "x"], ['k=say "hi", ok'], ["env.X=a'b,c"]]
)
def test_join_is_the_inverse_of_split(items: list[str]) -> None:
    assert split_options(join_options(items)) == items


def test_quoted_value_with_comma_reaches_the_config() -> None:
    config = cfg('cache_dir="/var/cache/a,b",ro')
    assert config.cache_dir == Path("/var/cache/a,b")


# --- dropped words -----------------------------------------------------------

DROPPED = [
    "defaults",
    "auto",
    "noauto",
    "user",
    "user=alice",
    "users",
    "nouser",
    "owner",
    "group",
    "_netdev",
    "no_netdev",
    "nofail",
    "nobootwait",
    "nonempty",
    "comment=cloudconfig",
    "x-systemd.automount",
    "x-systemd.mount-timeout=120",
    "x-systemd.requires=network-online.target",
    "X-mount.mkdir",
    "ro",
    "rw",
    "relatime",
    "strictatime",
    "atime",
    "nodiratime",
    "lazytime",
]


@pytest.mark.parametrize("word", DROPPED)
def test_mount_words_are_dropped_without_effect(word: str) -> None:
    triage = build_config(URL, "/mnt", [word])
    assert triage.config == DEFAULT
    assert triage.warnings == ()
    assert triage.forwarded == ()


def test_cloud_init_default_mount_options_are_accepted() -> None:
    options = (
        "defaults,nofail,x-systemd.after=cloud-init-network.service,_netdev,comment=cloudconfig"
    )
    assert cfg(options) == DEFAULT


def test_canonical_fstab_line_after_mount8() -> None:
    # What mount(8) hands the helper for the fstab line in docs/options.md.
    config = cfg("ro,allow_other,_netdev,nofail")
    assert config.allow_other


def test_user_mount_adds_the_implied_flags() -> None:
    config = cfg("rw,noexec,nosuid,nodev,_netdev,nofail,user")
    assert (config.noexec, config.nosuid, config.nodev) == (True, True, True)


def test_remount_is_rejected_even_when_sloppy() -> None:
    with pytest.raises(UsageError, match=r"'remount' is not accepted.*umount"):
        cfg("remount,ro", sloppy=True)


# --- VFS and FUSE flags ------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "field", "value"),
    [
        ("nosuid", "nosuid", True),
        ("suid", "nosuid", False),
        ("nodev", "nodev", True),
        ("dev", "nodev", False),
        ("noexec", "noexec", True),
        ("exec", "noexec", False),
        ("noatime", "noatime", True),
        ("sync", "sync", True),
        ("async", "sync", False),
        ("dirsync", "dirsync", True),
        ("allow_other", "allow_other", True),
        ("allow-other", "allow_other", True),
        ("allow_root", "allow_root", True),
        ("default_permissions", "default_permissions", True),
        ("debug", "debug", True),
    ],
)
def test_flags_set_config_fields(word: str, field: str, value: bool) -> None:
    triage = build_config(URL, "/mnt", [word])
    assert getattr(triage.config, field) is value
    assert triage.forwarded == (word.replace("-", "_"),)


def test_later_flags_win() -> None:
    assert cfg("noexec,exec").noexec is False
    assert cfg("suid", "nosuid").nosuid is True


def test_flag_with_a_value_is_an_error() -> None:
    assert "'allow_other' takes no value" in usage_error("allow_other=1")


def test_allow_other_and_allow_root_exclude_each_other() -> None:
    assert "exclude each other" in usage_error("allow_other,allow_root")


def test_debug_option_sets_debug_log_level() -> None:
    assert cfg("debug").log_level == "DEBUG"


@pytest.mark.parametrize("name", ["fsname=other", "subtype=foo"])
def test_fsname_and_subtype_are_ignored_with_a_warning(name: str) -> None:
    triage = build_config(URL, "/mnt", [name])
    assert triage.config == DEFAULT
    assert len(triage.warnings) == 1 and "ignored" in triage.warnings[0]


def test_fsname_equal_to_the_url_is_silent() -> None:
    assert build_config(URL, "/mnt", [f"fsname={URL},subtype=davfed"]).warnings == ()


# --- davfed's own options: valid -----------------------------------------------


@pytest.mark.parametrize(
    ("option", "field", "value"),
    [
        ("cache_dir=/var/cache/davfed", "cache_dir", Path("/var/cache/davfed")),
        ("cache-dir=/var/cache//davfed/", "cache_dir", Path("/var/cache/davfed")),
        ("cache_size=20G", "cache_size", 20 * GiB),
        ("cache_size=512M", "cache_size", 512 * MiB),
        ("cache_size=1.5GiB", "cache_size", 3 * GiB // 2),
        ("cache_size=1073741824", "cache_size", GiB),
        ("cache_size=0", "cache_size", 0),
        ("block_size=1M", "block_size", MiB),
        ("block_size=64k", "block_size", 64 << 10),
        ("readahead=0", "readahead", 0),
        ("readahead=128M", "readahead", 128 * MiB),
        ("max_connections=16", "max_connections", 16),
        ("uid=1000", "uid", 1000),
        ("gid=100", "gid", 100),
        ("uid=root", "uid", 0),
        ("gid=root", "gid", 0),
        ("umask=022", "umask", 0o22),
        ("umask=0027", "umask", 0o27),
        ("umask=0o077", "umask", 0o77),
        ("umask=0", "umask", 0),
        ("timeout=30", "timeout", 30.0),
        ("timeout=2.5s", "timeout", 2.5),
        ("connect_timeout=5", "connect_timeout", 5.0),
        ("retries=0", "retries", 0),
        ("retries=5", "retries", 5),
        ("mount_timeout=45", "mount_timeout", 45.0),
        ("attr_timeout=0", "attr_timeout", 0.0),
        ("entry_timeout=1.5", "entry_timeout", 1.5),
        ("negative_timeout=2", "negative_timeout", 2.0),
        ("dir_timeout=300", "dir_timeout", 300.0),
        ("log_level=debug", "log_level", "DEBUG"),
        ("log_level=WARN", "log_level", "WARNING"),
        ("log_format=json", "log_format", "json"),
        ("log_format=TEXT", "log_format", "text"),
        ("log_file=/var/log/davfed.log", "log_file", Path("/var/log/davfed.log")),
        ("x509_proxy=/tmp/x509up_u0", "x509_proxy", Path("/tmp/x509up_u0")),
        ("x509_cert=/etc/grid-security/hostcert.pem", "x509_cert",
         Path("/etc/grid-security/hostcert.pem")),
        ("x509_key=/etc/grid-security/hostkey.pem", "x509_key",
         Path("/etc/grid-security/hostkey.pem")),
        ("token_file=/run/davfed/token", "token_file", Path("/run/davfed/token")),
        ("capath=/etc/grid-security/certificates", "capath",
         Path("/etc/grid-security/certificates")),
        ("proxy=http://squid:3128", "proxy", "http://squid:3128"),
        ("proxy=http://a:3128|http://b:3128;DIRECT", "proxy",
         "http://a:3128|http://b:3128;DIRECT"),
    ],
)  # fmt: skip
def test_own_options_valid(option: str, field: str, value: object) -> None:
    triage = build_config(URL, "/mnt", [option])
    assert getattr(triage.config, field) == value
    assert triage.forwarded == (option.replace("-", "_", 1) if "-" in option.split("=")[0]
                                else option,)  # fmt: skip


def test_uid_and_gid_names_are_looked_up() -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    config = cfg(f"uid={user},gid={group}")
    assert (config.uid, config.gid) == (os.getuid(), os.getgid())


def test_env_options_are_collected_in_order() -> None:
    triage = build_config(URL, "/mnt", ["env.HTTPS_PROXY=http://s:3128,env.X509_CERT_DIR=/c"])
    assert triage.config.env == (("HTTPS_PROXY", "http://s:3128"), ("X509_CERT_DIR", "/c"))
    assert triage.forwarded == ("env.HTTPS_PROXY=http://s:3128", "env.X509_CERT_DIR=/c")


def test_config_option_reads_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "site.conf"
    conf.write_text("cache_size = 3G\n")
    triage = build_config(URL, "/mnt", [f"config={conf}"])
    assert triage.config.config_file == conf
    assert triage.config.cache_size == 3 * GiB
    assert triage.origins["cache_size"] == f"{conf}:1"
    assert triage.warnings == ()


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    assert "does not exist" in usage_error(f"config={tmp_path / 'nope.conf'}")


def test_mount_timeout_at_systemd_default_warns() -> None:
    triage = build_config(URL, "/mnt", ["mount_timeout=90"])
    assert any("x-systemd.mount-timeout" in w for w in triage.warnings)


def test_verbose_raises_the_log_level_and_is_forwarded() -> None:
    triage = build_config(URL, "/mnt", ["log_level=warning"], verbose=1)
    assert triage.config.log_level == "INFO"
    assert triage.forwarded[-1] == "log_level=info"
    assert build_config(URL, "/mnt", verbose=5).config.log_level == "DEBUG"


def test_foreground_debug_and_mountpoint() -> None:
    config = build_config(URL, "relative/dir", debug=True).config
    assert config.foreground and config.debug and config.log_level == "DEBUG"
    assert config.mountpoint == Path(os.getcwd(), "relative/dir")


# --- davfed's own options: invalid ---------------------------------------------


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("cache_dir=relative/dir", "absolute"),
        ("cache_dir=~/cache", "absolute"),
        ("cache_size=lots", "size"),
        ("cache_size=-1G", "size"),
        ("cache_size=20X", "size"),
        ("block_size=5000", "multiple of 4K"),
        ("block_size=1G", "between"),
        ("block_size=1k", "between"),
        ("readahead=big", "size"),
        ("max_connections=0", "between 1 and 256"),
        ("max_connections=many", "whole number"),
        ("uid=-1", "no such user"),
        ("uid=no-such-user-davfed", "no such user"),
        ("gid=no-such-group-davfed", "no such group"),
        ("umask=999", "octal"),
        ("umask=01777", "at most 0777"),
        ("timeout=0", "more than 0"),
        ("timeout=soon", "seconds"),
        ("timeout=nan", "finite"),
        ("connect_timeout=-1", "more than 0"),
        ("retries=100", "between 0 and 20"),
        ("mount_timeout=0", "more than 0"),
        ("attr_timeout=-1", "at least 0"),
        ("entry_timeout=x", "seconds"),
        ("dir_timeout=-5", "at least 0"),
        ("log_level=loud", "expected one of"),
        ("log_format=xml", "text or json"),
        ("log_file=davfed.log", "absolute"),
        ("x509_proxy=x509up", "absolute"),
        ("x509_cert=cert.pem", "absolute"),
        ("x509_key=key.pem", "absolute"),
        ("token_file=~/.token", "absolute"),
        ("capath=certs", "absolute"),
        ("proxy=squid:3128", "neither DIRECT nor"),
        ("proxy=http://user:pw@squid:3128", "inline"),
        ("config=davfed.conf", "absolute"),
    ],
)
def test_own_options_invalid(option: str, reason: str) -> None:
    message = usage_error(option)
    key = option.split("=")[0]
    assert f"bad value for mount option '{key}'" in message
    assert reason in message


@pytest.mark.parametrize("key", ["cache_size", "uid", "timeout", "log_file"])
def test_value_options_need_a_value(key: str) -> None:
    assert f"'{key}' needs a value" in usage_error(key)
    assert f"'{key}' needs a value" in usage_error(f"{key}=")


def test_cache_smaller_than_a_block_is_an_error() -> None:
    assert "smaller than block_size" in usage_error("cache_size=1M,block_size=4M")


# --- secrets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "option", ["password=x", "token=abc", "bearer_token=abc", "access_token=a", "secret=s"]
)
def test_inline_secrets_are_rejected_even_when_sloppy(option: str) -> None:
    with pytest.raises(UsageError, match="secrets are never accepted inline"):
        cfg(option, sloppy=True)


@pytest.mark.parametrize(
    "option", ["env.BEARER_TOKEN=eyJabc", "env.AWS_SECRET_ACCESS_KEY=k", "env.PASSWORD=p"]
)
def test_secret_environment_variables_are_rejected(option: str) -> None:
    assert "would expose a secret" in usage_error(option)


def test_environment_variables_naming_files_are_fine() -> None:
    assert cfg("env.BEARER_TOKEN_FILE=/run/t").env == (("BEARER_TOKEN_FILE", "/run/t"),)


@pytest.mark.parametrize("option", ["env.=x", "env.1X=y", "env.X"])
def test_bad_env_options(option: str) -> None:
    assert "env.NAME=VALUE" in usage_error(option)


# --- unknown options and sloppy mode -------------------------------------------


@pytest.mark.parametrize("option", ["kernel_cache", "frobnicate=3", "auto_unmount"])
def test_unknown_option_is_named(option: str) -> None:
    key = option.split("=")[0]
    assert usage_error("ro", option, "allow_other") == f"unknown mount option '{key}'"


def test_sloppy_mode_warns_and_drops_unknown_options() -> None:
    triage = build_config(URL, "/mnt", ["frobnicate=3,allow_other"], sloppy=True)
    assert triage.config.allow_other
    assert triage.warnings == ("ignoring unknown mount option 'frobnicate' (sloppy mode)",)
    assert triage.forwarded == ("allow_other",)


def test_sloppy_mode_still_rejects_bad_values() -> None:
    with pytest.raises(UsageError, match="cache_size"):
        cfg("cache_size=huge", sloppy=True)


# --- the URL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://dynafed.example/belle",
        "https://dynafed.example/belle/",
        "http://127.0.0.1:8080/fed",
        "https://[::1]:8443/fed",
        "https://dynafed.example/a%20b",
    ],
)
def test_good_urls_are_kept_exactly(url: str) -> None:
    assert validate_url(url) == url
    assert build_config(url, "/mnt").config.url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://dynafed.example/belle", "http or https"),
        ("dynafed.example/belle", "http or https"),
        ("https:///belle", "no host"),
        ("https://", "no host"),
        ("", "empty"),
        ("https://dynafed.example/a b", "spaces"),
        ("https://dynafed.example:99999/", "Port out of range"),
        ("https://user:pw@dynafed.example/", "credentials"),
        ("https://dynafed.example/f?X-Amz-Signature=abc", "signature or token"),
        ("https://dynafed.example/f?authz=abc", "signature or token"),
        ("https://dynafed.example/belle#top", "fragment"),
    ],
)
def test_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(UsageError, match="bad URL") as info:
        validate_url(url)
    assert reason in str(info.value)


# --- sizes and the table itself -------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 4096, MiB, 20 * GiB, 3 * MiB + 1])
def test_format_size_round_trips(value: int) -> None:
    assert parse_size(format_size(value)) == value


def test_every_value_option_names_a_config_field() -> None:
    names = set(Config.__dataclass_fields__)
    for name, rule in OPTIONS.items():
        if rule.kind is Kind.VALUE:
            assert rule.field in names, name
        for field in rule.sets:
            assert field in names, name


def test_every_option_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "options.md").read_text()
    for name in OPTIONS:
        assert f"`{name}" in doc, f"{name} missing from docs/options.md"
