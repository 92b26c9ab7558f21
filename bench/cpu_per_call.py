"""Proxy CPU per call, stdio upstream (S1) against Streamable HTTP upstream (S2), in one short run.

DESIGN.md section 5: HTTP-upstream CPU per call at most 1.5x the stdio path's, and S2 at least
0.8x the throughput of calling the upstream directly. This is the quick check behind those two
ratios (a minute or two, not bench/run.py's 20): it starts mcp-barbican with bench/configs/s1.yaml
and s2.yaml (same pinning as bench/run.py), plus server-everything over HTTP called directly, then
runs the same closed-loop client (wrk, 8 connections) against each in turn, `--repeat` times, and
reads the proxy's utime+stime from /proc/PID/stat around each run. Ratios are taken within one
repetition. Run from the repository root:

    python bench/cpu_per_call.py [--seconds 6] [--repeat 2] [--rate N] [--spy PREFIX]

Closed-loop CPU per call depends on the rate reached (per-call costs that batch, such as the
audit writer's hand-off, shrink as the rate grows), and S2's rate is bounded by its upstream,
which shares CPU 1 with the client. `--rate N` drives every target open loop at the same N
calls/s with bench/mcprate.py instead, so the two proxies batch alike; the throughput columns
then only show that the rate was held.

`--spy PREFIX` records both proxies with py-spy (`PY_SPY`, default `py-spy` on PATH) during the
first repetition into PREFIX-s1.txt and PREFIX-s2.txt, in raw (collapsed stack) format, 500 Hz.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run


def measure(
    lab: run.Lab, target: run.Target, seconds: float, spy: str | None = None, rate: int | None = None
) -> dict[str, Any]:
    assert target.url is not None
    spying: subprocess.Popen[bytes] | None = None
    with run.mcp_session(target) as session:
        before = run.cpu_sample(target.proc)
        if spy and target.proc is not None:
            exe = os.environ.get("PY_SPY", "py-spy")
            argv = [exe, "record", "-r", "500", "--nonblocking", "-f", "raw", "-o", spy, "-p", str(target.proc.pid)]
            spying = subprocess.Popen([*argv, "-d", f"{seconds:g}"], stdout=subprocess.DEVNULL)
        if rate:
            result = run.run_rate(session, rate, seconds)
            result["rps"] = result["good"] / seconds
            result["errors"] = result.get("bad", 0)
            result["duration_us"] = seconds * 1e6
        else:
            result = run.run_wrk(target.url, session, seconds)
        after = run.cpu_sample(target.proc)
    if spying is not None:
        spying.wait(timeout=60)
    if target.proc is not None:
        result.update(run.cpu_delta(before, after, result["good"], result["duration_us"] / 1e6))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of one timed run")
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of S1, S2, direct")
    parser.add_argument("--rate", type=int, help="open loop at this many calls/s (bench/mcprate.py) instead of wrk")
    parser.add_argument("--spy", help="py-spy output prefix (first repetition)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mcp-barbican-cpu-"))
    (root / "logs").mkdir()
    settings = run.Settings(
        quick=True,
        out=root,
        seconds=args.seconds,
        warmup=1.0,
        repetitions=args.repeat,
        rates=(),
        rate_seconds=0.0,
        sessions=0,
        quiet_timeout=0.0,
        retries=0,
    )
    procs = run.Processes(root / "logs")
    lab = run.Lab(settings, procs, root / "state")
    lab.barbican_cmd = [sys.executable, "-m", "mcp_barbican"]  # the sources on PYTHONPATH, not an installed copy
    bearer = f"Bearer {lab.token}"
    s1 = run.Target("s1", "stdio upstream", "S1", auth=bearer, barbican=True)
    s2 = run.Target("s2", "HTTP upstream", "S2", auth=bearer, barbican=True)
    direct = run.Target("direct", "server-everything HTTP, direct", "S2")
    rows: list[dict[str, Any]] = []
    try:
        s1.proc, port, _ = lab.start_barbican("s1", "s1.yaml")
        s1.url = f"http://{run.LOOPBACK}:{port}/mcp/everything"
        upstream = lab.start_everything_http("s2-upstream", run.LOAD_CPU)[1]
        s2.proc, port, _ = lab.start_barbican("s2", "s2.yaml", {"BENCH_UPSTREAM_PORT": str(upstream)})
        s2.url = f"http://{run.LOOPBACK}:{port}/mcp/everything"
        direct.proc, port = lab.start_everything_http("direct", run.SUT_CPU)
        direct.url = f"http://{run.LOOPBACK}:{port}/mcp"
        for target in (s1, s2, direct):
            measure(lab, target, 1.0)  # warm-up
        for rep in range(args.repeat):
            spy = args.spy if rep == 0 else None
            a = measure(lab, s1, args.seconds, f"{spy}-s1.txt" if spy else None, args.rate)
            b = measure(lab, s2, args.seconds, f"{spy}-s2.txt" if spy else None, args.rate)
            c = measure(lab, direct, args.seconds, rate=args.rate)
            row = {
                "s1_us": a["cpu_us_per_call"],
                "s2_us": b["cpu_us_per_call"],
                "cpu_ratio": b["cpu_us_per_call"] / a["cpu_us_per_call"],
                "s1_rps": a["rps"],
                "s2_rps": b["rps"],
                "direct_rps": c["rps"],
                "s2_vs_direct": b["rps"] / c["rps"] if c["rps"] else 0.0,
                "errors": a["errors"] + b["errors"] + c["errors"],
            }
            rows.append(row)
            print(
                f"rep {rep + 1}: S1 {row['s1_us']:.0f} us/call ({row['s1_rps']:.0f}/s), "
                f"S2 {row['s2_us']:.0f} us/call ({row['s2_rps']:.0f}/s), ratio {row['cpu_ratio']:.2f}; "
                f"direct {row['direct_rps']:.0f}/s, S2/direct {row['s2_vs_direct']:.2f}; errors {row['errors']}",
                flush=True,
            )
    finally:
        procs.stop_all()
    if rows:
        ratio = statistics.median(r["cpu_ratio"] for r in rows)
        vs_direct = statistics.median(r["s2_vs_direct"] for r in rows)
        print(
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC median: S2/S1 CPU per call {ratio:.2f} (bar <= 1.5), ",
            end="",
        )
        print(f"S2/direct throughput {vs_direct:.2f} (bar >= 0.8); logs in {root}")
    return 0 if rows and not lab.errors else 1


if __name__ == "__main__":
    sys.exit(main())
