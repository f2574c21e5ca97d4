"""Expiry of pre-signed URLs is read from the URL itself."""

from __future__ import annotations

import calendar

from davfed_fuse.net.signedurl import renew_at, url_expiry
from davfed_fuse.redaction import redact_url

T0 = calendar.timegm((2026, 11, 26, 10, 0, 0, 0, 0, 0))


def test_sigv4_expiry() -> None:
    url = (
        "https://s3.example/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20261126"
        "&X-Amz-Date=20261126T100000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=abc"
    )
    assert url_expiry(url) == T0 + 3600


def test_sigv2_and_azure_expiry() -> None:
    assert url_expiry(f"http://h/b/k?AWSAccessKeyId=A&Expires={T0}&Signature=x") == T0
    azure = "https://a.blob/c/b?sv=2016-05-31&st=2026-11-26T09:00:00Z&se=2026-11-26T10:00:00Z&sr=b&sp=r&sig=s"
    assert url_expiry(azure) == T0


def test_plain_urls_do_not_expire() -> None:
    assert url_expiry("http://127.0.0.1:8080/ep0/file") is None
    assert url_expiry("http://h/f?Expires=soon") is None
    assert renew_at("http://h/f") is None


def test_renewal_leaves_a_margin() -> None:
    url = f"http://h/f?Expires={T0 + 3600}"
    assert renew_at(url, now=T0) == T0 + 3540
    # A short validity is renewed halfway, an expired one at once.
    assert renew_at(f"http://h/f?Expires={T0 + 30}", now=T0) == T0 + 15
    assert renew_at(f"http://h/f?Expires={T0 - 5}", now=T0) == T0


def test_redaction_hides_signatures_only() -> None:
    url = f"https://h/b/k?AWSAccessKeyId=AKIA&Expires={T0}&Signature=secret%2B"
    redacted = redact_url(url)
    assert "secret" not in redacted and "AKIA" not in redacted
    assert f"Expires={T0}" in redacted
    assert redact_url("http://h/plain") == "http://h/plain"
