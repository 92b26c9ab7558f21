"""Every third-party module the package imports is a declared runtime dependency.

The test extras pull in the MCP SDK, which brings PyJWT and more along; without this check a
missing runtime dependency passes CI and breaks `pip install . && mcp-barbican serve`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Import names whose distribution is called differently.
DISTRIBUTION_OF = {
    "jwt": "pyjwt",
    "yaml": "pyyaml",
    "dotenv": "python-dotenv",
    "prometheus_client": "prometheus-client",
    "cel_expr_python": "cel-expr-python",
    "jsonschema_rs": "jsonschema-rs",
}


def imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    for path in (ROOT / "src" / "mcp_barbican").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}


#: Modules imported only where an optional feature is on, and the extra that must declare them.
OPTIONAL = {"opentelemetry": "otel"}


def extra_distributions(extra: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][extra]
    return {re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    third_party = imported_top_level_modules() - set(sys.stdlib_module_names) - {"mcp_barbican"} - set(OPTIONAL)
    needed = {DISTRIBUTION_OF.get(module, module).lower() for module in third_party}
    assert needed - declared_distributions() == set()


def test_optional_imports_come_from_their_extra() -> None:
    assert {"opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= extra_distributions(
        OPTIONAL["opentelemetry"]
    )


def _modules() -> list[str]:
    package = ROOT / "src"
    return sorted(
        ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        for path in (package / "mcp_barbican").rglob("*.py")
        if path.name != "__main__.py"
    )


@pytest.mark.e2e
def test_every_module_imports_on_its_own() -> None:
    """No import cycle hides behind the order in which the app happens to import modules."""
    script = "import importlib, sys; importlib.import_module(sys.argv[1])"
    failures = []
    for module in _modules():
        result = subprocess.run([sys.executable, "-c", script, module], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            failures.append(f"{module}: {result.stderr.strip().splitlines()[-1]}")
    assert not failures, "\n".join(failures)
