"""A real S3-compatible server (moto in server mode) as its own process on loopback."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

# Below Linux's ephemeral range (32768-60999): a port the kernel hands out for bind(0) is also one it hands to the
# next outgoing connection, so a server started a moment later on it could find it taken (seen in CI with many
# concurrent clients: "address already in use"). Ports here are only ever taken by someone binding them.
_SERVER_PORTS = range(20000, 32000)
_ports = random.Random(os.getpid())


def free_port() -> int:
    """A free TCP port on loopback, outside the ephemeral range (see ``_SERVER_PORTS``)."""
    for _ in range(200):
        port = _ports.choice(_SERVER_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # that range is full: any free port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """Start ``moto_server`` and yield its endpoint URL; stop it on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
