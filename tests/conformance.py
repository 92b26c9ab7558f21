"""Harness for the official MCP conformance suite (a helper module, not a test file).

The suite (``@modelcontextprotocol/conformance``) is installed in ``tests/node`` by
``scripts/node-deps`` together with Node 22, which it needs (it crashes at start on Node 20). Two
pinned versions are aliased there: ``conformance-0116`` (0.1.16) and ``conformance-alpha``
(0.2.0-alpha.12). The CLI runs in ``server`` mode: it acts as an MCP client against a Streamable
HTTP URL, one scenario at a time, and writes ``<out_dir>/server-<scenario>-<timestamp>/checks.json``.

Verdicts come from those files, not from the CLI's exit code: a scenario passes when its
``checks.json`` exists and holds no FAILURE check (WARNING checks are reported, not failed). A
scenario the CLI announced but wrote no checks for counts as failed.

Typical use (see tests/test_conformance_fixture.py)::

    with start_fixture("streamable-http") as url:
        result = run_conformance(url, version="0.1.16", out_dir=tmp_path / "results")
    assert result.all_passed, result.summary()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
NODE_DIR: Final = REPO_ROOT / "tests" / "node"
NODE_MODULES: Final = NODE_DIR / "node_modules"
FIXTURE_SCRIPT: Final = REPO_ROOT / "tests" / "fixtures" / "conformance_server.py"

SuiteVersion = Literal["0.1.16", "0.2.0-alpha.12"]
SUITE_VERSIONS: Final[tuple[SuiteVersion, ...]] = ("0.1.16", "0.2.0-alpha.12")

# npm alias directory under tests/node/node_modules for each pinned suite version.
_PACKAGE_DIRS: Final[dict[SuiteVersion, str]] = {"0.1.16": "conformance-0116", "0.2.0-alpha.12": "conformance-alpha"}
# Arguments beyond --url/--suite/-o: alpha.12 must be pinned to the 2025-11-25 wire (its default
# run mixes in stateless 2026-07-28 scenarios and the default wire is due to move).
_VERSION_ARGS: Final[dict[SuiteVersion, tuple[str, ...]]] = {
    "0.1.16": (),
    "0.2.0-alpha.12": ("--spec-version", "2025-11-25"),
}
# How many scenarios `--suite all` runs (alpha.12 with --spec-version 2025-11-25).
EXPECTED_SCENARIO_COUNTS: Final[dict[SuiteVersion, int]] = {"0.1.16": 32, "0.2.0-alpha.12": 33}

NODE_TOOLING_HINT: Final = (
    "the Node tooling in tests/node is missing or incomplete (Node 22 + @modelcontextprotocol/conformance); "
    "run scripts/node-deps to install it"
)

DEFAULT_TIMEOUT: Final = 300.0

_RUNNING_RE: Final = re.compile(r"^=== Running scenario: (?P<name>\S+) ===$", re.MULTILINE)
_SKIPPED_RE: Final = re.compile(r"^SKIPPED: scenario '(?P<name>[^']+)'", re.MULTILINE)
# createResultDir(): `${prefix}-${scenario}-${new Date().toISOString().replace(/[:.]/g, '-')}`
_RESULT_DIR_RE: Final = re.compile(
    r"^(?:server|client)-(?P<name>.+)-(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z)$"
)


# ---------------------------------------------------------------------------------------------
# Node tooling
# ---------------------------------------------------------------------------------------------


def node_bin() -> Path:
    """Node 22 from the ``node`` npm package (the machine's own node may be too old)."""
    return NODE_MODULES / ".bin" / "node"


def conformance_entry(version: SuiteVersion) -> Path:
    """The CLI entry point (package.json ``bin.conformance``) of a pinned suite version."""
    return NODE_MODULES / _PACKAGE_DIRS[version] / "dist" / "index.js"


def _installed_version(version: SuiteVersion) -> str | None:
    try:
        manifest = json.loads((NODE_MODULES / _PACKAGE_DIRS[version] / "package.json").read_text())
    except (OSError, ValueError):
        return None
    value = manifest.get("version")
    return value if isinstance(value, str) else None


def conformance_problem() -> str | None:
    """Why the suite cannot run here, or None when it can."""
    node = node_bin()
    if not node.exists():
        return f"{node} not found; {NODE_TOOLING_HINT}"
    try:
        out = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{node} does not run ({exc}); {NODE_TOOLING_HINT}"
    if out.returncode != 0 or not out.stdout.startswith("v22."):
        return f"{node} --version gave {out.stdout.strip() or out.stderr.strip()!r}, need v22.x; {NODE_TOOLING_HINT}"
    for version in SUITE_VERSIONS:
        if not conformance_entry(version).exists():
            return f"{conformance_entry(version)} not found; {NODE_TOOLING_HINT}"
        installed = _installed_version(version)
        if installed != version:
            return f"{_PACKAGE_DIRS[version]} is {installed!r}, expected {version!r}; {NODE_TOOLING_HINT}"
    return None


def conformance_available() -> bool:
    return conformance_problem() is None


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    id: str
    status: str  # SUCCESS | FAILURE | WARNING | SKIPPED | INFO
    name: str = ""
    description: str = ""
    error_message: str | None = None
    details: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Check:
        details = raw.get("details")
        error = raw.get("errorMessage")
        return cls(
            id=str(raw.get("id", "?")),
            status=str(raw.get("status", "?")),
            name=str(raw.get("name", "")),
            description=str(raw.get("description", "")),
            error_message=str(error) if error is not None else None,
            details=details if isinstance(details, Mapping) else None,
        )

    def line(self) -> str:
        text = self.error_message or self.description
        return f"{self.id}: {text}" if text else self.id


ScenarioStatus = Literal["passed", "failed", "skipped"]


@dataclass
class ScenarioResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    result_dir: Path | None = None
    skipped: bool = False
    problem: str | None = None  # set when the scenario produced no usable checks.json

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAILURE"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "WARNING"]

    @property
    def status(self) -> ScenarioStatus:
        if self.skipped:
            return "skipped"
        if self.problem is not None or self.failures:
            return "failed"
        return "passed"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def failure_lines(self) -> list[str]:
        lines = [f"(no checks) {self.problem}"] if self.problem else []
        return lines + [c.line() for c in self.failures]


@dataclass
class ConformanceResult:
    version: SuiteVersion
    url: str
    command: list[str]
    out_dir: Path
    returncode: int | None  # None when the run timed out
    duration: float
    scenarios: dict[str, ScenarioResult]
    stdout: str = ""
    stderr: str = ""

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def passed(self) -> list[str]:
        return [n for n, s in self.scenarios.items() if s.passed]

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.scenarios.items() if s.failed]

    @property
    def skipped(self) -> list[str]:
        return [n for n, s in self.scenarios.items() if s.skipped]

    @property
    def with_warnings(self) -> list[str]:
        return [n for n, s in self.scenarios.items() if s.passed and s.warnings]

    @property
    def ran(self) -> int:
        return len(self.scenarios) - len(self.skipped)

    @property
    def all_passed(self) -> bool:
        """Every scenario that ran passed, at least one ran, and the run itself ended normally."""
        return self.ran > 0 and not self.failed and not self.timed_out

    def check_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for scenario in self.scenarios.values():
            for check in scenario.checks:
                counts[check.status] = counts.get(check.status, 0) + 1
        return counts

    def summary(self) -> str:
        counts = self.check_counts()
        head = (
            f"conformance {self.version} against {self.url}: {len(self.passed)}/{self.ran} scenarios passed"
            f" ({len(self.with_warnings)} with warnings, {len(self.skipped)} skipped);"
            f" checks {counts.get('SUCCESS', 0)} success / {counts.get('FAILURE', 0)} failure /"
            f" {counts.get('WARNING', 0)} warning; exit code {self.returncode}, {self.duration:.1f}s"
        )
        lines = [head]
        if self.timed_out:
            lines.append("  run TIMED OUT (killed); scenarios after the last one listed did not run")
        for name in self.failed:
            lines.append(f"  FAIL {name}")
            lines.extend(f"       - {text}" for text in self.scenarios[name].failure_lines())
        lines.extend(
            f"  warn {name}: " + "; ".join(c.line() for c in self.scenarios[name].warnings)
            for name in self.with_warnings
        )
        if not self.scenarios:
            tail = (self.stderr or self.stdout).strip().splitlines()[-15:]
            lines.append("  no scenario results; CLI output tail:")
            lines.extend(f"    {t}" for t in tail)
        lines.append(f"  results: {self.out_dir}")
        lines.append(f"  command: {' '.join(self.command)}")
        return "\n".join(lines)


def parse_results(out_dir: Path, stdout: str = "") -> dict[str, ScenarioResult]:
    """Per-scenario verdicts from every ``checks.json`` under ``out_dir`` (latest run of a scenario
    wins), plus the scenarios ``stdout`` announced as running or skipped."""
    scenarios: dict[str, ScenarioResult] = {}
    latest: dict[str, str] = {}
    for checks_file in sorted(out_dir.rglob("checks.json")):
        match = _RESULT_DIR_RE.match(checks_file.parent.name)
        name, stamp = (match.group("name"), match.group("ts")) if match else (checks_file.parent.name, "")
        if name in latest and latest[name] > stamp:
            continue
        latest[name] = stamp
        result = ScenarioResult(name=name, result_dir=checks_file.parent)
        try:
            raw = json.loads(checks_file.read_text())
        except (OSError, ValueError) as exc:
            result.problem = f"unreadable {checks_file}: {exc}"
        else:
            if isinstance(raw, list):
                result.checks = [Check.from_json(c) for c in raw if isinstance(c, Mapping)]
            else:
                result.problem = f"{checks_file} is not a JSON array"
        scenarios[name] = result
    for match in _SKIPPED_RE.finditer(stdout):
        name = match.group("name")
        scenarios.setdefault(name, ScenarioResult(name=name)).skipped = True
    for match in _RUNNING_RE.finditer(stdout):
        name = match.group("name")
        if name not in scenarios:
            scenarios[name] = ScenarioResult(
                name=name, problem="the CLI started this scenario but wrote no checks.json (crash or timeout?)"
            )
    return scenarios


# ---------------------------------------------------------------------------------------------
# Running the suite
# ---------------------------------------------------------------------------------------------


def conformance_command(url: str, *, version: SuiteVersion, out_dir: Path, extra_args: Sequence[str] = ()) -> list[str]:
    return [
        str(node_bin()),
        str(conformance_entry(version)),
        "server",
        "--url",
        url,
        "--suite",
        "all",
        *_VERSION_ARGS[version],
        "-o",
        str(out_dir),
        *extra_args,
    ]


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"npm_config_offline": "true", "NO_COLOR": "1", "FORCE_COLOR": "0", "CI": env.get("CI", "true")})
    return env


def run_conformance(
    url: str,
    *,
    version: SuiteVersion,
    out_dir: Path,
    extra_args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> ConformanceResult:
    """Run ``conformance server --suite all`` (alpha.12: ``--spec-version 2025-11-25``) against ``url``.

    ``out_dir`` should be empty or absent: results already in it are parsed too (the latest run of
    each scenario wins). Raises RuntimeError when the Node tooling is missing.
    """
    if version not in _PACKAGE_DIRS:
        raise ValueError(f"unknown conformance suite version {version!r}; use one of {SUITE_VERSIONS}")
    problem = conformance_problem()
    if problem is not None:
        raise RuntimeError(problem)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = conformance_command(url, version=version, out_dir=out_dir, extra_args=extra_args)
    started = time.monotonic()
    returncode: int | None
    with subprocess.Popen(
        command,
        cwd=NODE_DIR,
        env=_offline_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            returncode = None
    duration = time.monotonic() - started
    return ConformanceResult(
        version=version,
        url=url,
        command=command,
        out_dir=out_dir,
        returncode=returncode,
        duration=duration,
        scenarios=parse_results(out_dir, stdout),
        stdout=stdout,
        stderr=stderr,
    )


# ---------------------------------------------------------------------------------------------
# The fixture server
# ---------------------------------------------------------------------------------------------

FixtureTransport = Literal["stdio", "streamable-http", "sse"]
_URL_PATHS: Final[dict[str, str]] = {"streamable-http": "/mcp", "sse": "/sse"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def fixture_command(transport: str, port: int | None = None, host: str = "127.0.0.1") -> list[str]:
    """The command line that starts the fixture (for stdio: what a stdio upstream should spawn)."""
    command = [sys.executable, str(FIXTURE_SCRIPT), "--transport", transport]
    if transport != "stdio":
        command += ["--host", host, "--port", str(port if port is not None else free_port(host))]
    return command


def _wait_for_port(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"conformance fixture exited with {proc.returncode} before listening on {host}:{port}:\n"
                + _tail(log_path)
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"conformance fixture did not listen on {host}:{port} within {timeout}s:\n" + _tail(log_path)
            )
        time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


@contextlib.contextmanager
def start_fixture(
    transport: str,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    startup_timeout: float = 20.0,
) -> Iterator[str]:
    """Run the fixture over an HTTP transport in a subprocess and yield its URL.

    ``streamable-http`` yields ``http://HOST:PORT/mcp``, ``sse`` yields ``http://HOST:PORT/sse``.
    The fixture's stderr goes to ``log_path`` (a temporary file when omitted). A stdio fixture is
    spawned by its client instead: use ``fixture_command("stdio")``.
    """
    if transport not in _URL_PATHS:
        raise ValueError(
            f"start_fixture serves HTTP transports {tuple(_URL_PATHS)}; for stdio pass fixture_command('stdio') "
            "to the client that spawns it"
        )
    port = port if port is not None else free_port(host)
    with contextlib.ExitStack() as stack:
        if log_path is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conformance-fixture-")))
            log_path = tmp / "fixture.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = stack.enter_context(log_path.open("wb"))
        proc = subprocess.Popen(
            fixture_command(transport, port, host),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        stack.callback(stop_process, proc)
        _wait_for_port(proc, host, port, startup_timeout, log_path)
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{port}{_URL_PATHS[transport]}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/conformance.py [VERSION ...]``: run the suite directly against the fixture."""
    versions = list(argv if argv is not None else sys.argv[1:]) or list(SUITE_VERSIONS)
    problem = conformance_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    ok = True
    base = Path(tempfile.mkdtemp(prefix="conformance-"))
    for version in versions:
        if version not in _PACKAGE_DIRS:
            print(f"unknown version {version!r}; use one of {SUITE_VERSIONS}", file=sys.stderr)
            return 2
        suite: SuiteVersion = "0.1.16" if version == "0.1.16" else "0.2.0-alpha.12"
        with start_fixture("streamable-http", log_path=base / f"fixture-{suite}.log") as url:
            result = run_conformance(url, version=suite, out_dir=base / suite)
        print(result.summary())
        ok = ok and result.all_passed
    if ok:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
