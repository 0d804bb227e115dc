"""Running the app under uvicorn: on a socket bound here, in the foreground or in a thread."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

from vqgen.config import require
from vqgen.errors import VqgenError


@dataclass(frozen=True)
class ServerLimits:
    """``read_timeout``: seconds a client has to send a whole request (line, headers, body);
    ``keep_alive``: seconds an idle connection stays open between requests;
    ``max_connections``: open connections (and running requests) past which requests are
    answered 503; ``max_header_bytes``: the largest request line plus headers (more is a 400)."""

    read_timeout: float = 30.0
    keep_alive: int = 5
    max_connections: int = 256
    max_header_bytes: int = 16384

    def __post_init__(self):
        require(self.read_timeout > 0, "read_timeout", "must be positive")
        require(self.keep_alive >= 1, "keep_alive", "must be at least 1")
        require(self.max_connections >= 1, "max_connections", "must be at least 1")
        require(self.max_header_bytes >= 1024, "max_header_bytes", "must be at least 1024")


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); a clear error when it can't."""
    sock = None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as e:
        if sock is not None:
            sock.close()
        raise VqgenError(f"cannot listen on {host}:{port}: {e}") from None
    return sock


def make_server(app, sock: socket.socket, log_level: str = "warning", limits: ServerLimits = ServerLimits()):
    """A ``uvicorn.Server`` for ``app`` that will listen on ``sock``, with ``limits`` applied
    (read deadline, keep-alive, connections, header size: ``serve/limits.py``)."""
    import uvicorn

    from vqgen.serve.limits import uvicorn_options

    host, port = sock.getsockname()[:2]
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **uvicorn_options(limits)))


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Serve ``app`` from a background thread; yields the base URL, stops the server on exit."""
    sock = bind_socket(host, port)
    server = make_server(app, sock, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="vqgen-serve")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise VqgenError("the server thread did not start (see the log above)")
        time.sleep(0.01)
    host, port = sock.getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
