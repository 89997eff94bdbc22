"""A TCP forwarder that can be switched off: a real server's outage, without stopping the server.

    switch = Switch(mlflow_server.tracking_uri)   # http://127.0.0.1:<its own port>, off
    ... clients see connections closed at once (as a server that went away) ...
    switch.on()                                   # from now on every connection reaches the server
    switch.close()

Restarting the session's MLflow server would cost the other tests half a minute and its state.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

from .process import free_port


class Switch:
    def __init__(self, target_url: str, up: bool = False):
        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.up = up
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, name="switch", daemon=True).start()

    def on(self) -> None:
        self.up = True

    def off(self) -> None:
        self.up = False

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()  # the client reads a closed connection, as from a server that is down
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
