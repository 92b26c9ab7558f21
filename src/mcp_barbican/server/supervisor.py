"""`serve --workers N`: one supervisor binds the listeners once and keeps N forked workers serving them.

The supervisor starts no event loop and no thread, so forking stays safe: it sleeps in
`select` on its signal pipe and on each worker's ready pipe. Worker 1 starts first and alone,
so a mistake only the app finds (a file a sink cannot open) is reported once, and start-up
stops before any other worker runs. Then:
- SIGTERM / SIGINT: every worker drains (SIGTERM, as one process drains), then the supervisor
  exits 0; workers still running after `STOP_GRACE` seconds are killed.
- A worker that exits unasked is started again after a backoff (`restart_delay`), with a log
  line naming it and its exit status; the others keep serving.
- SIGHUP: forwarded to every worker (each reloads its config as one process does).
- SIGUSR2: rolling restart, one worker at a time: the new one accepts connections before the
  old one is asked to drain, so the listener is never left without a worker.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn

__all__ = [
    "ROLL_SIGNAL",
    "STOP_GRACE",
    "Supervisor",
    "describe_exit",
    "new_session_key",
    "restart_delay",
]

logger = logging.getLogger(__name__)

#: The signal that restarts the workers one at a time.
ROLL_SIGNAL: Final = signal.SIGUSR2
#: Seconds the workers get to drain on SIGTERM before they are killed.
STOP_GRACE: Final = 30.0
#: Seconds a replacement worker gets to accept connections in a rolling restart.
ROLL_READY_TIMEOUT: Final = 60.0
#: A worker that served this long before dying is restarted without delay growth.
STABLE_SECONDS: Final = 30.0
_HANDLED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, ROLL_SIGNAL, signal.SIGCHLD)

#: forks worker `number` writing its ready byte to the fd given; returns its pid (the child never returns).
Fork = Callable[[int, int, list[int]], int]


def new_session_key() -> str:
    """32 random bytes, URL-safe base64: one session-sealing key for every worker of a supervisor."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker that died `failures` times in a row: 0.5 s doubling to 30 s."""
    return float(min(0.5 * 2 ** max(failures - 1, 0), 30.0))


def describe_exit(status: int) -> str:
    """A wait status as words: `exit status 1`, `killed by signal SIGKILL`."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"killed by signal {name}"


@dataclass
class Worker:
    number: int
    pid: int
    ready_fd: int | None
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    #: Asked to stop: its exit is expected.
    retiring: bool = False


class Supervisor:
    """N workers, their restarts, the signals; `run` returns the exit status."""

    def __init__(self, count: int, fork: Fork) -> None:
        self.count = count
        self._fork = fork
        self.workers: dict[int, Worker] = {}
        self._restart_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._booting = True
        self._failed = False
        self._stop_deadline: float | None = None
        self._roll: list[int] = []
        self._roll_new: Worker | None = None
        self._roll_old: Worker | None = None
        self._roll_deadline = 0.0
        self._wakeup: tuple[int, int] = (-1, -1)

    def run(self) -> int:
        reader, writer = self._wakeup = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        previous = {sig: signal.signal(sig, _note) for sig in _HANDLED}
        old_wakeup = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        try:
            logger.info("supervisor (pid %d): starting %d workers, worker 1 first", os.getpid(), self.count)
            self._spawn(1)
            while self.workers or self._stop_deadline is None:
                self._step(reader)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(reader)
            os.close(writer)
        logger.info("every worker has exited")
        return 1 if self._failed else 0

    # -- the loop --------------------------------------------------------------------------

    def _step(self, wakeup: int) -> None:
        waiting = [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]
        readable, _, _ = select.select([wakeup, *waiting], [], [], self._timeout())  # retried on EINTR (PEP 475)
        if wakeup in readable:
            with contextlib.suppress(BlockingIOError):
                for signum in os.read(wakeup, 64):
                    self._signal(signum)
        for worker in list(self.workers.values()):
            if worker.ready_fd is not None and worker.ready_fd in readable:
                self._ready_byte(worker)
        self._reap()
        self._timers()

    def _timeout(self) -> float | None:
        deadlines = list(self._restart_at.values())
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        if self._roll_new is not None:
            deadlines.append(self._roll_deadline)
        if not deadlines:
            return None
        return max(min(deadlines) - time.monotonic(), 0.0)

    def _signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self._stop_deadline is None:
                logger.info("%s: stopping the workers", signal.Signals(signum).name)
                self._stop()
        elif signum == signal.SIGHUP:
            live = [w for w in self.workers.values() if not w.retiring]
            logger.info("SIGHUP: forwarded to %d workers (config reload)", len(live))
            for worker in live:
                _kill(worker.pid, signal.SIGHUP)
        elif signum == ROLL_SIGNAL:
            self._start_roll()

    def _stop(self) -> None:
        self._stop_deadline = time.monotonic() + STOP_GRACE
        self._restart_at.clear()
        self._roll.clear()
        for worker in self.workers.values():
            worker.retiring = True
            _kill(worker.pid, signal.SIGTERM)

    def _timers(self) -> None:
        now = time.monotonic()
        if self._stop_deadline is not None:
            if now >= self._stop_deadline and self.workers:
                left = ", ".join(f"worker {w.number} (pid {w.pid})" for w in self.workers.values())
                logger.warning("killing what did not drain within %.0fs: %s", STOP_GRACE, left)
                for worker in self.workers.values():
                    _kill(worker.pid, signal.SIGKILL)
                self._stop_deadline = now + STOP_GRACE
            return
        for number, when in list(self._restart_at.items()):
            if now >= when:
                del self._restart_at[number]
                self._spawn(number)
        new = self._roll_new
        if new is not None and now >= self._roll_deadline:
            logger.error(
                "rolling restart: the new worker %d (pid %d) did not accept connections within %.0fs; "
                "the old one keeps serving, rolling restart abandoned",
                new.number,
                new.pid,
                ROLL_READY_TIMEOUT,
            )
            new.retiring = True
            _kill(new.pid, signal.SIGKILL)
            self._roll_new = self._roll_old = None
            self._roll.clear()

    # -- workers ---------------------------------------------------------------------------

    def _spawn(self, number: int) -> Worker | None:
        """Fork worker `number`; None if the system refuses (out of processes or memory): it is tried again later."""
        try:
            reader, writer = os.pipe()
        except OSError as exc:
            self._cannot_start(number, exc)
            return None
        inherited = [*self._wakeup, reader, *(w.ready_fd for w in self.workers.values() if w.ready_fd is not None)]
        try:
            pid = self._fork(number, writer, inherited)
        except OSError as exc:
            os.close(reader)
            self._cannot_start(number, exc)
            return None
        finally:
            os.close(writer)
        worker = Worker(number, pid, reader)
        self.workers[pid] = worker
        logger.info("started worker %d (pid %d)", number, pid)
        return worker

    def _cannot_start(self, number: int, exc: OSError) -> None:
        if self._booting:
            logger.error("cannot start worker %d: %s: stopping", number, exc.strerror or exc)
            self._failed = True
            self._stop()
            return
        failures = self._failures.get(number, 0) + 1
        self._failures[number] = failures
        delay = restart_delay(failures)
        logger.error("cannot start worker %d: %s; trying again in %.1fs", number, exc.strerror or exc, delay)
        self._restart_at[number] = time.monotonic() + delay

    def _ready_byte(self, worker: Worker) -> None:
        assert worker.ready_fd is not None
        try:
            data = os.read(worker.ready_fd, 16)
        except OSError:
            data = b""
        os.close(worker.ready_fd)
        worker.ready_fd = None
        if not data:  # closed without a word: it died starting; its exit tells the rest
            return
        worker.ready = True
        logger.info("worker %d (pid %d) accepts connections", worker.number, worker.pid)
        if self._stop_deadline is not None:
            return
        if self._booting:
            if worker.number == 1 and len(self.workers) == 1:
                for number in range(2, self.count + 1):
                    self._spawn(number)
            if all(any(w.ready and w.number == n for w in self.workers.values()) for n in range(1, self.count + 1)):
                self._booting = False
                logger.info("%d workers serving", self.count)
        if worker is self._roll_new:
            self._roll_new = None
            old = self._roll_old
            if old is not None:
                logger.info(
                    "rolling restart: worker %d: pid %d serves, pid %d drains", worker.number, worker.pid, old.pid
                )
                old.retiring = True
                _kill(old.pid, signal.SIGTERM)
            else:
                self._roll_next()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._exited(worker, status)

    def _exited(self, worker: Worker, status: int) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None
        how = describe_exit(status)
        name = f"worker {worker.number} (pid {worker.pid})"
        if self._stop_deadline is not None:
            logger.info("%s exited (%s)", name, how)
        elif worker.retiring and worker is self._roll_old:
            logger.info("rolling restart: %s drained and exited (%s)", name, how)
            self._roll_old = None
            self._roll_next()
        elif worker.retiring:
            logger.info("%s exited (%s)", name, how)
        elif worker is self._roll_new:
            logger.error(
                "rolling restart: the new %s exited before accepting connections (%s); "
                "the old one keeps serving, rolling restart abandoned",
                name,
                how,
            )
            self._roll_new = self._roll_old = None
            self._roll.clear()
        elif self._booting and not worker.ready:
            logger.error("%s failed to start (%s): stopping", name, how)
            self._failed = True
            self._stop()
        else:
            self._restart(worker, name, how)

    def _restart(self, worker: Worker, name: str, how: str) -> None:
        if self._roll_new is not None and self._roll_new.number == worker.number:
            logger.warning("%s exited unexpectedly (%s); its replacement is starting", name, how)
            self._roll_old = None
            return
        lived = time.monotonic() - worker.started
        failures = 1 if lived >= STABLE_SECONDS else self._failures.get(worker.number, 0) + 1
        self._failures[worker.number] = failures
        delay = restart_delay(failures)
        logger.warning("%s exited unexpectedly (%s); restarting it in %.1fs", name, how, delay)
        self._restart_at[worker.number] = time.monotonic() + delay

    # -- rolling restart -------------------------------------------------------------------

    def _start_roll(self) -> None:
        if self._booting or self._stop_deadline is not None:
            logger.warning("%s ignored: the workers are starting or stopping", ROLL_SIGNAL.name)
            return
        if self._roll or self._roll_new is not None or self._roll_old is not None:
            logger.warning("%s ignored: a rolling restart is under way", ROLL_SIGNAL.name)
            return
        logger.info("rolling restart (%s): %d workers, one at a time", ROLL_SIGNAL.name, self.count)
        self._roll = list(range(1, self.count + 1))
        self._roll_next()

    def _roll_next(self) -> None:
        while self._roll:
            number = self._roll.pop(0)
            current = [w for w in self.workers.values() if w.number == number and not w.retiring]
            if not current:  # dead and waiting for its restart: the restart is its renewal
                continue
            new = self._spawn(number)
            if new is None:  # the old one keeps serving; a restart is not due, it runs
                self._restart_at.pop(number, None)
                logger.error("rolling restart abandoned: worker %d could not be replaced", number)
                self._roll.clear()
                return
            self._roll_old, self._roll_new = current[0], new
            self._roll_deadline = time.monotonic() + ROLL_READY_TIMEOUT
            return
        logger.info("rolling restart: done")


def _note(_signum: int, _frame: object) -> None:
    """The signal's number reaches the loop through the wakeup fd; nothing to do here."""


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def fork_worker(run: Callable[[int, int, int], NoReturn]) -> Fork:
    """A `Fork` running `run(number, supervisor pid, ready fd)` in the child, after closing what it must not hold."""

    def fork(number: int, ready: int, inherited: list[int]) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is the e2e tests'
            signal.set_wakeup_fd(-1)
            for fd in inherited:
                with contextlib.suppress(OSError):
                    os.close(fd)
            run(number, parent, ready)
        return pid

    return fork
