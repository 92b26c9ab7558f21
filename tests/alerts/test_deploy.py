"""deploy/: the Prometheus rules pass promtool, every rule and dashboard panel is complete, and every
`mcp_barbican_*` series they name is one a running proxy exports (a rule over a missing series never fires)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest
import yaml

from tests.proxy import REPO_ROOT, demo_mcp, free_port, run_proxy

RULES: Final = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD: Final = REPO_ROOT / "deploy" / "grafana" / "dashboard.json"
PROMTOOL: Final = Path("/usr/bin/promtool")
SERIES: Final = re.compile(r"\bmcp_barbican_[a-z0-9_]+")
_SUFFIXES: Final = {"histogram": ("_bucket", "_sum", "_count")}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def named_series() -> set[str]:
    expressions = [rule["expr"] for rule in rules()]
    expressions += [target["expr"] for panel in panels() for target in panel["targets"]]
    expressions += [json.loads(DASHBOARD.read_text())["templating"]["list"][0]["definition"]]
    return {name for expr in expressions for name in SERIES.findall(expr)}


@pytest.mark.e2e
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_every_rule_waits_has_a_severity_and_says_what_is_wrong() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 10
    for rule in rules():
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert SERIES.search(rule["expr"]), f"{rule['alert']} names no mcp_barbican_* series"


def test_the_dashboard_is_valid_and_every_panel_has_a_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [each["name"] for each in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(panels()) >= 10
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert SERIES.search(target["expr"]), f"{panel['title']}: {target['expr']!r} names no series"
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"


def exported(text: str) -> set[str]:
    """Every series name a family of the exposition has, samples or not (an unused counter shows no sample).

    The text format names a counter's family with its `_total`, a histogram's without its suffixes.
    """
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.update(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


@pytest.mark.e2e
def test_every_series_the_rules_and_the_dashboard_name_is_exported(tmp_path: Path) -> None:
    server = {
        "metrics": {"public": True},
        "audit": {"sinks": [{"type": "file", "path": str(tmp_path / "audit.log")}]},
        "alerts": {"webhooks": [{"url": f"http://127.0.0.1:{free_port()}/hook"}]},
    }
    with run_proxy(tmp_path, [demo_mcp()], server=server) as proxy:
        text = httpx2.get(f"{proxy.base}/metrics").text
    missing = named_series() - exported(text)
    assert not missing, f"named in deploy/ but not exported: {sorted(missing)}"
    assert {"mcp_barbican_alerts_sent_total", "mcp_barbican_upstream_up"} <= named_series()
