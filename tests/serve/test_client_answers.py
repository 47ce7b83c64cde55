"""The client against a sidecar stand-in that answers what a sidecar never would (a proxy's
page, a cut or mis-shaped body, a redirect, an undecodable body): every call says so with
:class:`SidecarError`, which a gateway failing open catches, never a KeyError or an httpx error."""

from __future__ import annotations

import asyncio
import http.server
import threading

import pytest

from probewatch.client import AsyncClient, Client, SidecarError

pytestmark = pytest.mark.timeout(120)

ANSWERS = {  # path prefix -> (status, headers, body)
    "/html": (200, {}, b"<html>maintenance</html>"),
    "/empty": (200, {}, b""),
    "/cut": (200, {}, b'{"results": ['),
    "/shape": (200, {}, b'{"foo": 1}'),
    "/fewer": (200, {}, b'{"results": [], "errors": 0}'),
    "/redirect": (308, {"location": "https://elsewhere.example/v1/observe"}, b""),
    "/gzip": (200, {"content-encoding": "gzip"}, b"not gzip at all"),
}


class StandIn(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, headers, body = ANSWERS["/" + self.path.split("/")[1]]
        self.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


CALLS = {
    "observe": lambda c: c.observe("a", "b"),
    "observe_many": lambda c: c.observe_many([("a", "b"), ("c", "d")]),
    "report": lambda c: c.report("a"),
    "accounts": lambda c: c.accounts(),
    "forget": lambda c: c.forget("a"),
    "campaigns": lambda c: c.campaigns(),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_every_call_says_an_answer_that_is_not_the_sidecar_s_with_sidecar_error(stand_in, answer):
    # a JSON object of another shape is a report or a page as far as the client can tell; the
    # calls that read fields out of it (results, forgotten) check them
    calls = (
        {n: c for n, c in CALLS.items() if n in ("observe", "observe_many", "forget")}
        if answer
        in (
            "/shape",
            "/fewer",
        )
        else CALLS
    )
    with Client(stand_in + answer, token="t" * 32, timeout=5) as client:
        for name, call in calls.items():
            with pytest.raises(SidecarError) as raised:
                call(client)
            expected = "UnexpectedAnswer" if answer != "/redirect" else None
            assert raised.value.error_type == expected, (answer, name, raised.value)
        assert client.ready() is (answer not in ("/redirect", "/gzip"))  # a bool, never an httpx error

    async def run() -> None:
        async with AsyncClient(stand_in + answer, token="t" * 32, timeout=5) as client:
            for call in calls.values():
                with pytest.raises(SidecarError):
                    await call(client)
            assert isinstance(await client.ready(), bool)

    asyncio.run(run())


def test_an_unreachable_sidecar_is_status_0_for_metrics_too():
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with Client(f"http://127.0.0.1:{port}", token="t" * 32, timeout=2) as client:
        with pytest.raises(SidecarError) as raised:
            client.metrics()
        assert (raised.value.status, raised.value.error_type) == (0, "Unreachable")
        assert client.ready() is False


@pytest.mark.parametrize(("header", "seconds"), [("2", 2.0), ("0", 0.0), ("-5", None), ("nan", None), ("inf", None)])
def test_retry_after_is_a_delay_one_can_sleep_or_none(header, seconds):
    from probewatch.client import _seconds

    assert _seconds(header) == seconds
