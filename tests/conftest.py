"""Suite-wide fixtures and the `e2e` marker guard.

A test that starts a process (the proxy, a Node or Python MCP server, a CLI run, the conformance
suite) must carry the `e2e` marker, so that `pytest -m "not e2e"` is the fast in-process run. The
guard below makes a forgotten marker fail loudly: every `subprocess.Popen` (which asyncio's and
anyio's subprocess functions use too) started while a test without `e2e` runs, its fixtures
included, fails that test, even when the code under test catches the error it raises.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator
from typing import Any

import pytest

pytest_plugins = ["pytester"]  # tests/test_markers.py runs the guard on a suite of its own

_current: list[pytest.Item] = []
_violations = pytest.StashKey[list[str]]()
_popen_init = subprocess.Popen.__init__


def _guarded_popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
    if _current and _current[-1].get_closest_marker("e2e") is None:
        item = _current[-1]
        problem = f"{item.nodeid} starts a process ({args!r}) but is not marked e2e"
        item.stash.setdefault(_violations, []).append(problem)
        raise RuntimeError(problem)
    _popen_init(self, args, *rest, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _popen_init  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    _current.append(item)
    try:
        return (yield)
    finally:
        _current.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    problems = item.stash.get(_violations, [])
    if problems and report.passed and call.when != "setup":
        report.outcome = "failed"
        report.longrepr = "\n".join(problems)
        problems.clear()
    return report


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
