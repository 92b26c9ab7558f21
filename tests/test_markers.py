"""The e2e guard of tests/conftest.py, run in-process on small suites of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

SUITE = """
import subprocess

import pytest


def start() -> None:
    try:
        subprocess.Popen(["true"])  # a process start whose error the code under test swallows
    except RuntimeError:
        pass


def test_unmarked_starts_a_process() -> None:
    start()


@pytest.fixture
def started() -> None:
    start()


def test_unmarked_uses_a_fixture_that_starts_one(started: None) -> None:
    pass


def test_unmarked_in_process() -> None:
    pass
"""


def test_a_test_that_starts_a_process_without_the_e2e_marker_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_unmarked_starts_a_process starts a process (*) but is not marked e2e",
            "*test_unmarked_uses_a_fixture_that_starts_one starts a process (*) but is not marked e2e",
        ]
    )
