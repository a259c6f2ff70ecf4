"""Faults for the drills (tests/e2e/test_fault_drills.py): a TCP proxy between the platform and a
service (PostgreSQL, Redis) that the test cuts and restores, so an outage is real on the wire without
stopping the machine's own server, which other tests and people share."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _drop(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (no orderly FIN), waking the thread blocked on it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Listens on a free loopback port and forwards each connection to ``target``.

    ``cut()`` resets every open connection and from then on resets each new one as soon as it is
    accepted (to the client: the server is gone, as after a crash or a failover); ``restore()``
    forwards again. The listening port stays the same throughout, so the client's URL does not change.

    ``delay``: hold each chunk read that many seconds before passing it on, as a network's one-way
    latency would (``bench/query_count.py --rtt-ms``). A chunk is read once the one before it in the
    same direction has gone: fine for request-then-answer protocols, where one side speaks at a time.
    """

    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        self.accepted = 0
        self.refused = 0
        threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True).start()

    def url(self, template: str) -> str:
        """``template`` with ``{port}`` filled in, e.g. ``postgres://postgres@127.0.0.1:{port}/db``."""
        return template.format(port=self.port)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, set()
        for sock in sockets:
            _drop(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut:
                self.refused += 1
                _drop(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _drop(client)
                continue
            self.accepted += 1
            for sock in (client, upstream):  # pass each chunk on as it comes (no waiting to coalesce)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._cut:  # cut while connecting
                    _drop(client)
                    _drop(upstream)
                    continue
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        # One side is done: end both, so neither end waits on a half-open connection.
        with self._lock:
            self._open.discard(source)
            self._open.discard(sink)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@contextmanager
def tcp_proxy(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()
