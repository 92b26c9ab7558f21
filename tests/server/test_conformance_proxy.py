"""The official MCP conformance suite, run through the proxy: nothing that passes direct may fail proxied.

The upstream is our conformance fixture (tests/fixtures/conformance_server.py) over stdio,
Streamable HTTP and legacy SSE; the suite talks Streamable HTTP to `/mcp/conformance`.
The suite cannot send credentials, so this MCP runs with an explicit `auth: {type: none}`
on loopback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import (
    EXPECTED_SCENARIO_COUNTS,
    SUITE_VERSIONS,
    ConformanceResult,
    SuiteVersion,
    conformance_problem,
    fixture_command,
    run_conformance,
    start_fixture,
)
from tests.proxy import run_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.conformance]


def _require_node() -> None:
    problem = conformance_problem()
    if problem is not None:
        pytest.fail(problem)


@pytest.fixture(scope="module")
def direct_results(tmp_path_factory: pytest.TempPathFactory) -> dict[SuiteVersion, ConformanceResult]:
    _require_node()
    results = {}
    with start_fixture("streamable-http") as url:
        for version in SUITE_VERSIONS:
            out = tmp_path_factory.mktemp(f"direct-{version}")
            results[version] = run_conformance(url, version=version, out_dir=out)
    return results


@contextlib.contextmanager
def fixture_upstream(transport: str) -> Iterator[dict[str, Any]]:
    """The MCP entry that puts the fixture behind the proxy over `transport`."""
    if transport == "stdio":
        command = fixture_command("stdio")
        yield {"command": command[0], "args": command[1:], "transport": "stdio"}
        return
    with start_fixture(transport) as url:
        yield {"url": url, "transport": transport}


@pytest.mark.parametrize("version", SUITE_VERSIONS)
@pytest.mark.parametrize("transport", ["stdio", "streamable-http", "sse"])
def test_every_scenario_that_passes_direct_passes_through_the_proxy(
    tmp_path: Path, direct_results: dict[SuiteVersion, ConformanceResult], transport: str, version: SuiteVersion
) -> None:
    direct = direct_results[version]
    assert direct.ran == EXPECTED_SCENARIO_COUNTS[version], direct.summary()
    with fixture_upstream(transport) as upstream:
        mcp = {"id": "conformance", "auth": {"type": "none"}, **upstream}
        with run_proxy(tmp_path, [mcp]) as proxy:
            result = run_conformance(proxy.url("conformance"), version=version, out_dir=tmp_path / "results")
    lost = sorted(set(direct.passed) - set(result.passed))
    assert not lost, f"passed direct but not through the proxy ({transport}): {lost}\n{result.summary()}"
    assert result.ran == direct.ran, result.summary()
