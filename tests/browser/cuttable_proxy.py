"""A TCP proxy in front of the app whose connections a test cuts at once: a dropped network, a load balancer
restarting. The browser sees its lesson socket end without a close frame (code 1006), as it would then; the app
sees its page gone. Whatever connects after the cut is carried as before.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

CHUNK = 65_536


class CuttableProxy:
    """Listens on 127.0.0.1:`port` and carries each connection to 127.0.0.1:`target_port`, byte for byte (the
    Host and Origin the page sends are its own, so the app sees the page as served from the proxy)."""

    def __init__(self, listener: socket.socket, target_port: int) -> None:
        self._listener = listener
        self._target_port = target_port
        self.port: int = listener.getsockname()[1]
        self._open: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        """Accept until the listener is closed."""
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def cut(self) -> int:
        """Close every connection open now, both ways, without a word to either end; how many there were."""
        with self._lock:
            cut, self._open = self._open, []
        for pair in cut:
            for end in pair:
                _close(end)
        return len(cut)

    def close(self) -> None:
        self._listener.close()
        self.cut()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Carry `source`'s bytes to `sink` until either end closes; then close both."""
    with contextlib.suppress(OSError):
        while data := source.recv(CHUNK):
            sink.sendall(data)
    _close(source)
    _close(sink)


def _close(end: socket.socket) -> None:
    with contextlib.suppress(OSError):
        end.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv() on it
    end.close()


@contextlib.contextmanager
def run_cuttable_proxy(target_port: int) -> Iterator[CuttableProxy]:
    """A CuttableProxy to `target_port`, serving for the block."""
    proxy = CuttableProxy(socket.create_server(("127.0.0.1", 0)), target_port)
    thread = threading.Thread(target=proxy.serve, name="cuttable-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(timeout=5)
