"""The Prometheus client: one number out of a query result, named errors for no data, bad results and no server."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from slipway.clients.prometheus import NoData, Prometheus, QueryFailed, Unreachable, parse_result


def vector(*values: str) -> dict[str, Any]:
    return {"resultType": "vector", "result": [{"metric": {}, "value": [0, v]} for v in values]}


def test_one_series_is_a_number():
    assert parse_result(vector("0.25")) == 0.25
    assert parse_result({"resultType": "scalar", "result": [0, "3"]}) == 3.0


def test_empty_and_nan_are_no_data():
    with pytest.raises(NoData):
        parse_result(vector())
    with pytest.raises(NoData, match="NaN"):
        parse_result(vector("NaN"))


def test_many_series_or_a_matrix_fail():
    with pytest.raises(QueryFailed, match="2 series"):
        parse_result(vector("1", "2"))
    with pytest.raises(QueryFailed):
        parse_result({"resultType": "matrix", "result": []})


class FakeProm(BaseHTTPRequestHandler):
    """A loopback HTTP server answering like Prometheus (a real socket, not a mock of httpx)."""

    answers: ClassVar[list[tuple[int, dict[str, Any]]]] = []

    def do_GET(self) -> None:
        code, body = self.answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server():
    srv = HTTPServer(("127.0.0.1", 0), FakeProm)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_query_over_http(server):
    FakeProm.answers[:] = [
        (200, {"status": "success", "data": vector("0.5")}),
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
        (503, {"status": "error"}),
    ]
    prom = Prometheus(server)
    assert prom.query("up") == 0.5
    with pytest.raises(QueryFailed, match="parse error"):
        prom.query("up{")
    with pytest.raises(Unreachable, match="503"):
        prom.query("up")


def test_unreachable_and_unset():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unreachable, match="unreachable"):
        Prometheus(f"http://127.0.0.1:{port}", timeout=1).query("up")
    with pytest.raises(Unreachable, match="SLIPWAY_PROMETHEUS_URL"):
        Prometheus("").query("up")
