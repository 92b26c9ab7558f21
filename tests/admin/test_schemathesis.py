"""schemathesis drives every operation of /admin/openapi.json with generated input: no server errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.admin.test_app import ADMIN_IPS, ADMIN_TOKEN
from tests.proxy import demo_mcp, run_proxy

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(600)
def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    # The venv's own script first: the test may run from a venv that is not activated.
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st is not None, "schemathesis is a test dependency (pip install -e '.[test]')"
    # No stdio registrations: generated definitions must not start processes.
    server = {"admin": {"token": ADMIN_TOKEN, "ip_whitelist": ADMIN_IPS, "allow_stdio": False}}
    with run_proxy(tmp_path, [demo_mcp("demo")], server=server) as proxy:
        done = subprocess.run(
            [
                st,
                "run",
                f"{proxy.base}/admin/openapi.json",
                "--header",
                f"Authorization: Bearer {ADMIN_TOKEN}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "25",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=540,
            cwd=tmp_path,
            check=False,
        )
        log = proxy.log_text()
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-2000:]}\nproxy log:\n{log[-3000:]}"
    assert "Traceback" not in log
