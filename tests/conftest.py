"""Fixtures shared by every test tier: the test federation and real mounts."""

pytest_plugins = ["tests.testfed_fixtures", "tests.mounting"]
