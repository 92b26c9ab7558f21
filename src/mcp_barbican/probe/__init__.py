"""`mcp-barbican probe URL`: the seed's security tests, and more, against any MCP endpoint.

A client of the endpoint like any other: it imports nothing of the proxy's server side.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections.abc import Callable
from typing import Final

from mcp_barbican.probe.checks import CHECKS, Severity, failing
from mcp_barbican.probe.client import TargetError, parse_target
from mcp_barbican.probe.report import render
from mcp_barbican.probe.runner import MAX_BODY_BYTES, MAX_BURST, Options, TargetUnreachable, run

__all__ = ["DESCRIPTION", "add_arguments", "bounded_int", "command"]

DESCRIPTION: Final = f"""\
Test an MCP endpoint (Streamable HTTP URL, e.g. http://127.0.0.1:6001/mcp/demo) the way a careful
tester would, and print a scorecard.

What it sends, to URL's origin only (no redirect is followed; the token goes nowhere else and is
never printed): initialize requests without a credential, with malformed ones (Bearer, "Bearer ",
Basic, InvalidFormat, non-ASCII bytes), a random token, an expired and an unsigned JWT; with
--token, a session (initialize, tools/list) and a few more sessions to judge their ids, each closed
again; requests with a foreign Origin, a foreign Host, look-alike CORS origins; one oversized body
(--body-size); a JSON-RPC batch of two pings; one request with an unsupported MCP-Protocol-Version;
a burst of --burst pings (stopped at the first 429). About 40 requests plus the burst, one
connection each, each with a --timeout deadline; for https URLs one TLS handshake per version.

The bad credentials it sends count as authentication failures: a server that bans after a few
(auth_failure_ban) may ban the probing address (mcp-barbican ignores loopback by default).

Checks: {", ".join(CHECKS)}.
Exit status: 0 when no finding is at or above --fail-on, 1 when one is, 2 when URL cannot be reached."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the MCP endpoint (http:// or https://)")
    parser.add_argument("--token", help="a valid bearer token for URL (enables the session checks)")
    parser.add_argument("--second-token", help="another valid token: a session must not answer it")
    parser.add_argument("--format", dest="output", choices=("text", "json", "sarif"), default="text")
    parser.add_argument(
        "--fail-on",
        type=str.lower,
        choices=[severity.label for severity in Severity],
        default="high",
        help="exit 1 when a finding is at or above this severity (default high)",
    )
    parser.add_argument("--timeout", type=_timeout, default=5.0, metavar="S", help="seconds per request (default 5)")
    parser.add_argument(
        "--burst",
        type=bounded_int(0, MAX_BURST),
        default=60,
        metavar="N",
        help=f"requests in the rate-limit burst (0-{MAX_BURST}, default 60; 0 skips it)",
    )
    parser.add_argument(
        "--body-size",
        type=bounded_int(1024, MAX_BODY_BYTES),
        default=5 * 1024 * 1024,
        metavar="BYTES",
        help="size of the oversized body (default 5 MiB, at most 64 MiB)",
    )
    parser.add_argument("--cafile", help="CA bundle to verify an https URL's certificate")
    parser.add_argument("--insecure", action="store_true", help="do not verify the https certificate")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 60 seconds")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type` taking an integer from `low` to `high` (the command line's other options use it too)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def command(args: argparse.Namespace) -> int:
    try:
        target = parse_target(args.url)
    except TargetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        context = _ssl_context(args.cafile, args.insecure)
    except (OSError, ssl.SSLError) as exc:
        print(f"error: --cafile {args.cafile}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    options = Options(
        token=args.token,
        second_token=args.second_token,
        timeout=args.timeout,
        burst=args.burst,
        body_bytes=args.body_size,
        ssl_context=context,
    )
    try:
        report = asyncio.run(run(target, options))
    except TargetUnreachable as exc:
        print(f"error: cannot reach {target.url}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a last guard: one line, never a traceback
        print(f"error: probing {target.url} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(render(report, args.output))
    return 1 if failing(report.findings, Severity.parse(args.fail_on)) else 0


def _ssl_context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
