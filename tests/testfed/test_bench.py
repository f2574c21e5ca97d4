"""The redirect costs a round trip, not throughput (1 GiB; run with DAVFED_BENCH=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from davfed_testfed.bench import MiB, run


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DAVFED_BENCH") != "1", reason="1 GiB benchmark: DAVFED_BENCH=1")
def test_curl_redirect_is_at_least_90_percent_of_direct() -> None:
    size_mib = int(os.environ.get("DAVFED_BENCH_MIB", "1024"))
    assert run(size_mib * MiB, 5, Path("/tmp/davfed-bench")) >= 0.9
