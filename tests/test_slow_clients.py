"""The server's connection limits (vqgen.serve.limits): a slow client cannot hold a connection."""
import contextlib
import select
import socket
import threading
import time

import pytest

from vqgen.serve.server import ServerLimits, make_server
from vqgen.serve.server import bind_socket

READ_TIMEOUT = 0.6


async def echo_app(scope, receive, send):
    """Reads the whole body, answers its length."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def limited_server(**limits):
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(echo_app, sock, "warning", ServerLimits(**limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def drip(address, chunks: list[bytes], interval: float) -> tuple[bytes, float]:
    """Send ``chunks`` one every ``interval`` s, then read to EOF; returns (answer, seconds until closed)."""
    start = time.monotonic()
    with socket.create_connection(address, timeout=10) as conn:
        for chunk in chunks:
            if select.select([conn], [], [], 0)[0]:  # the server answered: stop sending (no RST race)
                break
            try:
                conn.sendall(chunk)
            except OSError:  # the server has closed the connection
                break
            time.sleep(interval)
        answer = b""
        with contextlib.suppress(OSError):
            while data := conn.recv(4096):
                answer += data
    return answer, time.monotonic() - start


REQUEST = b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 40\r\n\r\n" + b"b" * 40


@pytest.mark.parametrize("chunks", [
    [],  # connects and sends nothing
    [bytes([c]) for c in REQUEST[:30]],  # the request line and headers a byte at a time
    [REQUEST[:-40]] + [b"b"] * 30,  # whole headers, then the body a byte at a time
], ids=["silent", "slow-headers", "slow-body"])
def test_slow_loris_client_is_dropped_within_the_read_timeout(chunks):
    with limited_server(read_timeout=READ_TIMEOUT) as address:
        answer, held = drip(address, chunks, interval=0.1)
    assert READ_TIMEOUT * 0.8 < held < READ_TIMEOUT + 2.0
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_requests_in_time_are_served_and_idle_keep_alive_closes():
    with limited_server(read_timeout=READ_TIMEOUT, keep_alive=1) as address:
        # a request sent in pieces inside the deadline is answered; then the idle connection closes
        answer, held = drip(address, [REQUEST[:20], REQUEST[20:60], REQUEST[60:]], interval=0.1)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"40") and held < 4
        # one connection serves requests one after another, each with its own deadline
        with socket.create_connection(address, timeout=10) as conn:
            for _ in range(3):
                conn.sendall(REQUEST[:30])
                time.sleep(READ_TIMEOUT * 0.6)
                conn.sendall(REQUEST[30:])
                answer = b""
                while not answer.endswith(b"\r\n\r\n40"):
                    data = conn.recv(4096)
                    assert data, answer  # closed before the whole answer
                    answer += data
                assert answer.startswith(b"HTTP/1.1 200 ")


def test_serve_help_states_what_needs_the_key_and_the_limits(capsys):
    from vqgen.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "/docs (they need the key too)" in text and "the API docs and schema need it too" in text
    assert "--read-timeout SECONDS" in text and "--max-connections N" in text
