"""``inferline serve --workers N``: N processes serving one port, each with its own app.

    code = supervise(worker, (args,), workers=4, host="127.0.0.1", port=8000, grace_s=30)
    # worker(args, port, ready): builds its app, listens with reuse_port, calls ready(url)

The parent holds the port with a bound socket that never listens (``SO_REUSEPORT``, so
port 0 picks one port for every worker), starts the workers (spawned: each builds its own
container), says ``serving on URL`` once all of them listen, and passes SIGTERM/SIGINT on
to each: every worker drains as one ``inferline serve`` does, and the parent returns once
all have exited (0 if all exited cleanly). Workers run in their own process groups, so a
terminal's Ctrl-C reaches them once, through the parent. A worker that dies unasked stops
the others, and the parent returns its status.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import structlog

from inferline.errors import ConfigurationError
from inferline.server.runner import http_url

log = structlog.get_logger(__name__)

Worker = Callable[..., None]  # worker(*args, port, ready)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
KILL_AFTER_S = 15.0  # past the drain grace, stragglers are killed


def supervise(worker: Worker, args: Sequence[Any], *, workers: int, host: str, port: int,
              grace_s: float) -> int:
    """Run ``workers`` processes of ``worker`` on ``host:port`` until a stop signal."""
    ctx = multiprocessing.get_context("spawn")
    with _reserve(host, port) as held:
        port = held.getsockname()[1]
        ready: multiprocessing.Queue[str] = ctx.Queue()
        procs = [ctx.Process(target=_work, args=(worker, tuple(args), port, ready),
                             name=f"inferline-worker-{i}") for i in range(workers)]
        return _Supervisor(procs, ready, http_url(host, port), grace_s).run()


class _Supervisor:
    def __init__(self, procs: Sequence[BaseProcess], ready: multiprocessing.Queue[str], url: str,
                 grace_s: float) -> None:
        self.procs, self.ready, self.url, self.grace_s = procs, ready, url, grace_s
        self.stop_at: float | None = None  # when the stop began
        self.status = 0

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._forward) for sig in STOP_SIGNALS}
        try:
            for proc in self.procs:
                proc.start()
            if self.stop_at is not None:  # asked to stop while starting them
                self._signal(signal.SIGTERM)
            self._wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not self.status and any(p.exitcode != 0 for p in self.procs):
            self.status = 1  # one did not drain cleanly
        log.info("workers_stopped", status=self.status)
        return self.status

    def _wait(self) -> None:
        listening, announced = 0, False
        while live := [p for p in self.procs if p.exitcode is None]:
            wait([p.sentinel for p in live], timeout=0.1)
            with contextlib.suppress(queue.Empty):
                while True:  # one message per worker that listens
                    self.ready.get_nowait()
                    listening += 1
            if listening == len(self.procs) and self.stop_at is None and not announced:
                announced = True
                log.info("workers_started", url=self.url, pids=[p.pid for p in self.procs])
                print(f"inferline: serving on {self.url}", file=sys.stderr, flush=True)
            self._reap()

    def _reap(self) -> None:
        """A worker that exits unasked stops the rest; stragglers past the grace are killed."""
        for proc in self.procs:
            if proc.exitcode not in (None, 0) and self.stop_at is None:
                self.status = proc.exitcode if proc.exitcode > 0 else 1
                log.error("worker_died", pid=proc.pid, exitcode=proc.exitcode)
                self._signal(signal.SIGTERM)
        if self.stop_at is not None and time.monotonic() - self.stop_at > (
                self.grace_s + KILL_AFTER_S):
            self._signal(signal.SIGKILL)  # (a killed worker makes ``run`` return 1)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        log.info("workers_stopping", signal=signal.Signals(signum).name)
        self._signal(signal.SIGTERM)  # SIGINT too: a worker drains on SIGTERM

    def _signal(self, signum: int) -> None:
        self.stop_at = self.stop_at or time.monotonic()
        for proc in self.procs:
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # exited since
                    os.kill(proc.pid, signum)


def _work(worker: Worker, args: tuple[Any, ...], port: int,
          ready: multiprocessing.Queue[str]) -> None:
    """A worker process: its own process group; a stop signal before its server takes
    over the signals ends it cleanly."""
    os.setpgid(0, 0)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit_cleanly)
    try:
        worker(*args, port, ready.put)
    except ConfigurationError as exc:
        print(f"inferline: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` that never listens."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:  # no socket yet: the host is at fault, else the port
        if sock is not None:
            sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                 key="server.host" if sock is None else "server.port") from None
    return sock
