"""Fixtures shared by every test tier: the test federation (``tests/testfed_fixtures.py``)."""

pytest_plugins = ["tests.testfed_fixtures"]
