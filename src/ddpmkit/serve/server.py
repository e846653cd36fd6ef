"""Running the application: the listening socket and uvicorn around it.

The socket is bound before uvicorn starts, so a port in use is one line, and `--port 0` (any free
port) still tells the address it got. `start_in_thread` runs the same server beside other work
(the tests, the load check)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Optional

import uvicorn
from starlette.applications import Starlette

from ddpmkit.errors import DdpmkitError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def public_warning(host: str) -> Optional[str]:
    """The warning printed when the server listens beyond this machine (None on a loopback address)."""
    if host in LOOPBACK_HOSTS:
        return None
    return (f"listening on {host}: anyone who can reach this machine can use the page, run jobs on its device "
            "and read the pictures made (there is no login); the default, 127.0.0.1, is this machine only")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one). One line when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DdpmkitError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise DdpmkitError(f"port {port} on {host} is in use: choose another --port (0: any free one)") from None
        raise DdpmkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app: Starlette) -> uvicorn.Server:
    """uvicorn quiet but for errors; open event streams close within 2 s of Ctrl-C."""
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    return uvicorn.Server(config)


def run(app: Starlette, sock: socket.socket) -> None:
    """Serve until Ctrl-C."""
    make_server(app).run(sockets=[sock])


def start_in_thread(app: Starlette, sock: socket.socket, timeout: float = 30.0) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve in a thread (uvicorn leaves the signals to the main thread); returns once the server
    answers. Stop it with `stop`."""
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    return server, thread


def stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(30)
