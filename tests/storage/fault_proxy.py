"""A fault-injecting HTTP proxy in front of the moto S3 server.

The code under test only ever sees an endpoint URL (as it would for a flaky
S3, MinIO or Ceph). Rules pick requests by method, path regex and headers and,
for the first `times` matches, answer an S3 error (503 SlowDown, 500, 403...),
stall past the client's read timeout, forward and then lose the response, forward
and cut the response body halfway (a connection dropped mid-download), or forward
with a header stripped (a store that ignores conditional writes).
Everything else is forwarded unchanged. `log` records what happened.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
}

ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
)


@dataclass
class Rule:
    """For the first `times` requests matching method/path/header, do `action`.

    action: "error" (answer `status`/`code`), "stall" (hold `stall_s`, then drop
    the connection), "lose_response" (forward, then answer 500 instead of the
    real response), "cut_body" (forward, announce the whole body, send half of it,
    then drop the connection), "strip_header" (forward without `header`), "delay"
    (hold `stall_s`, then forward: a slow store; with `release`, only until that event is set:
    the test decides when the store answers).
    """

    action: str
    method: str | None = None
    path: str = ".*"  # regex searched in the URL path + query
    header: str | None = None  # only requests carrying this header match (case-insensitive)
    times: int = 1
    status: int = 503
    code: str = "SlowDown"
    stall_s: float = 3.0
    release: threading.Event | None = None
    hits: int = field(default=0, init=False)

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        if self.header is not None and self.header.lower() not in headers:
            return False
        return re.search(self.path, path) is not None


class FaultProxy:
    def __init__(self, upstream_url: str):
        parsed = urllib.parse.urlparse(upstream_url)
        self.upstream = (parsed.hostname, parsed.port)
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome)
        self.inflight = 0  # requests being forwarded right now
        self.max_inflight = 0  # the most seen at once (checks bounded concurrency)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self.thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.log.clear()
            self.max_inflight = 0

    def pick(self, method: str, path: str, headers: dict[str, str]) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path, headers):
                    rule.hits += 1
                    return rule
        return None

    def record(self, method: str, path: str, outcome: str) -> None:
        with self.lock:
            self.log.append((method, path, outcome))

    def enter(self) -> None:
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def leave(self) -> None:
        with self.lock:
            self.inflight -= 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += chunk
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            body = self._body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            rule = proxy.pick(self.command, self.path, headers)
            action = rule.action if rule else "forward"
            proxy.record(self.command, self.path, action)
            if action == "error":
                return self._error(rule.status, rule.code)
            if action == "stall":
                time.sleep(rule.stall_s)
                self.close_connection = True
                return
            if action == "delay":
                if rule.release is not None:
                    rule.release.wait(rule.stall_s)
                else:
                    time.sleep(rule.stall_s)
            drop = rule.header.lower() if rule and action == "strip_header" else None
            proxy.enter()
            try:
                status, reason, resp_headers, resp_body = self._forward(body, drop)
            except OSError:  # upstream gone (e.g. at session teardown): answer like a gateway would
                return self._error(502, "BadGateway")
            finally:
                proxy.leave()
            if action == "lose_response":
                return self._error(500, "InternalError")
            self._reply(status, reason, resp_headers, resp_body, cut=action == "cut_body")

        def _forward(self, body: bytes, drop: str | None):
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                out_headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != drop
                }
                out_headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=out_headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            finally:
                conn.close()

        def _reply(
            self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, cut: bool = False
        ) -> None:
            self.send_response(status, reason)
            for key, value in headers:
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            if self.command == "HEAD":
                length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                self.send_header("Content-Length", length)
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut:  # the client sees a body shorter than announced: a stream cut mid-download
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            body = (
                b""
                if self.command == "HEAD"
                else ERROR_BODY.format(code=code, message="injected by fault proxy").encode()
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
