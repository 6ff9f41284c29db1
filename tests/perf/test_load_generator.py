"""perf/load.py against a stdlib HTTP server that misbehaves on purpose: answers that close the
connection, error statuses, chunked bodies, a server that never answers, a port nobody listens on."""
import http.server
import threading
import time

import pytest

from perf import load
from server.launcher import free_port


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body == b"slow":
            time.sleep(3)
        if body == b"close":          # an answer, then the connection is closed
            self._answer(200, b"bye", close=True)
        elif body == b"bad":
            self._answer(400, b"bad request: names the problem")
        elif body == b"chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"3\r\nabc\r\n0\r\n\r\n")
        else:
            self._answer(200, b"ok:" + body)

    def _answer(self, status, payload, close=False):
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = close


@pytest.fixture(scope="module")
def port():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def test_keep_alive_answers_are_counted_and_bodies_reach_ok(port):
    seen = set()
    r = load.drive("127.0.0.1", port, "/x", [b"a", b"b", b"chunked"], 3, 0.5,
                   ok=lambda status, body: seen.add(body) or status == 200)
    assert r.errors == 0 and r.requests > 30 and r.throughput > 0 and 0 < r.p50_ms <= r.p99_ms
    assert seen == {b"ok:a", b"ok:b", b"abc"}


def test_a_closed_connection_is_reopened_and_errors_are_counted(port):
    r = load.drive("127.0.0.1", port, "/x", [b"close", b"bad"], 2, 0.5)
    # worker 0 sends only "close" (answered, then reconnects), worker 1 only "bad" (400s)
    assert r.requests > 10 and r.errors > 10 and "names the problem" in r.first_error


def test_a_port_nobody_listens_on_gives_errors_not_a_hang():
    start = time.monotonic()
    r = load.drive("127.0.0.1", free_port(), "/x", [b"a"], 2, 0.3)
    assert r.requests == 0 and r.errors > 0 and r.first_error and time.monotonic() - start < 5


@pytest.mark.slow  # waits out a 3 s request by design
def test_a_request_that_outlives_the_run_still_finishes_it(port):
    # One request in flight when the time is up is waited for, not abandoned.
    r = load.drive("127.0.0.1", port, "/x", [b"slow"], 1, 0.2)
    assert r.requests == 1 and r.errors == 0 and r.seconds >= 2.9
