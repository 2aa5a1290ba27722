"""``infaas serve --workers N``: N uvicorn worker processes, each accepting on its own ``SO_REUSEPORT`` socket.

uvicorn's own ``workers`` share one listening socket, and whichever process wakes first accepts every pending
connection: a client that opens its connections at once (``wrk``'s 16, a pool) found them all, or 12 of 16
and 13 of 16, in one process while the other idled (``ss`` under ``wrk -c16``, three tries). With one socket
per process bound with ``SO_REUSEPORT`` the kernel spreads new connections over the sockets by a hash of their
addresses: at random, so 16 connections split 8/8 to 11/5 most of the time, not always evenly. The supervisor
is uvicorn's (signals, health checks, restarting a dead worker), with each worker given its own socket, also
after a restart. Sockets are bound here, before any worker starts, so a port in use fails at once; Linux lets
only processes of the same user join the port.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger(__name__)


def reuse_port_sockets(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port``, each with ``SO_REUSEPORT`` (port 0: the first one's port).

    Each listens at once: the kernel spreads connections only over sockets that listen, and a worker still
    starting would otherwise leave every early connection to the first (16 of 16 in the first ``wrk`` run after
    start-up); connections hashed to a worker's socket before it starts wait in that socket's backlog.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family=family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ReusePortSupervisor(Multiprocess):
    """uvicorn's multiprocess supervisor, worker ``i`` always on socket ``i``.

    Restarting all workers in place (SIGHUP) and changing their number (SIGTTIN, SIGTTOU) are not offered: each
    needs a socket of its own, bound before the workers start.
    """

    def _start(self, index: int) -> Process:
        process = Process(self.config, [self.sockets[index]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(index) for index in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
        """As uvicorn's: replace a worker that died or hangs, unless it never started (then stop everything)."""
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error("serve worker [%s] failed to start, stopping", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.warning("serve worker [%s] died; starting another on its socket", process.pid)
            self.processes[index] = self._start(index)

    def handle_hup(self) -> None:
        log.warning("SIGHUP ignored: infaas serve --workers does not restart its workers in place")

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: the number of infaas serve workers is fixed at start")

    def handle_ttou(self) -> None:
        log.warning("SIGTTOU ignored: the number of infaas serve workers is fixed at start")


def run_group(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """``uvicorn.run(app, ...)`` as ``workers`` processes, each on its own ``SO_REUSEPORT`` socket of the port."""
    if workers < 2:
        raise ValueError(f"a group needs at least 2 workers, got {workers}")
    config = uvicorn.Config(app, host=host, port=port, workers=workers, **options)
    sockets = reuse_port_sockets(host, port, workers, config.backlog)
    log.info("infaas serve: %d processes on %s:%d (SO_REUSEPORT)", workers, host, sockets[0].getsockname()[1])
    try:
        ReusePortSupervisor(config, sockets).run()
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            sock.close()
