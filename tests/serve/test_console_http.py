"""The console over plain HTTP: ``--no-auth`` needs no login but still wants each form's CSRF
token, a known-benign mark survives kill -9 (it is journaled before it is applied), a script
may read pages with the bearer token, and ``console: false`` takes the pages away."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from probewatch.serve.app import create_app
from probewatch.serve.config import ServerConfig
from probewatch.serve.console import SECURITY_HEADERS
from tests.support import AUTH, TOKEN, SidecarProcess, free_port, httpx

pytestmark = pytest.mark.timeout(300)

ACCOUNT = "analyst-test"


class NoAuthSidecar(SidecarProcess):
    """`probewatch serve --no-auth` (SidecarProcess always sets a token; this one never does)."""

    def __init__(self, data_dir: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
        env.update({"PROBEWATCH_ENGINE_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"})
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed by terminate() or kill()
        command = [sys.executable, "-m", "probewatch.serve", "--no-auth", "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page should carry a CSRF token"
    return match.group(1)


def test_no_auth_needs_no_login_but_forms_need_their_token_and_a_mark_survives_kill_9(tmp_path):
    data = tmp_path / "data"
    server = NoAuthSidecar(data, tmp_path / "server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            prompts = [f"How do I repot a {plant} without hurting its roots?" for plant in ("fern", "cactus", "orchid")]
            items = [{"account": ACCOUNT, "prompt": p} for p in prompts]
            assert http.post("/v1/observe", json={"items": items}).status_code == 200
            page = http.get("/ui/accounts")  # no login page: straight in, with a session for the forms
            assert page.status_code == 200 and ACCOUNT in page.text
            assert "Sign out" not in page.text
            assert "httponly" in page.headers["set-cookie"].lower()
            assert "samesite=strict" in page.headers["set-cookie"].lower()
            assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
            confirm = http.get("/ui/actions/mark-benign", params={"account": ACCOUNT})
            form = {"account": ACCOUNT, "confirm": "yes"}
            refused = http.post("/ui/actions/mark-benign", data=form)  # the session cookie alone is not enough
            assert refused.status_code == 403 and "CSRF" in refused.text
            wrong = http.post("/ui/actions/mark-benign", data={**form, "csrf": "0" * 64})
            assert wrong.status_code == 403
            done = http.post("/ui/actions/mark-benign", data={**form, "csrf": csrf_of(confirm.text)})
            assert done.status_code == 200 and "is marked known-benign" in done.text
            assert "known benign" in http.get(f"/ui/accounts/{ACCOUNT}").text
            unknown = http.post(
                "/ui/actions/mark-benign", data={**form, "account": "nobody", "csrf": csrf_of(confirm.text)}
            )
            assert unknown.status_code == 404 and "nothing was marked" in unknown.text
        server.kill()  # no shutdown snapshot: the mark must come back from the journal
        server = NoAuthSidecar(data, tmp_path / "server2.log")
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            page = http.get(f"/ui/accounts/{ACCOUNT}")
            assert page.status_code == 200 and 'class="badge benign">known benign' in page.text
            assert http.get("/ui/accounts/nobody").status_code == 404
            confirm = http.get("/ui/actions/forget", params={"account": ACCOUNT})
            forgot = http.post(
                "/ui/actions/forget", data={"account": ACCOUNT, "confirm": "yes", "csrf": csrf_of(confirm.text)}
            )
            assert forgot.status_code == 200 and "was forgotten" in forgot.text
            assert http.get(f"/v1/accounts/{ACCOUNT}").status_code == 404
            # accounts named like dot segments: linked by query, since a browser resolves them away
            dots = [{"account": a, "prompt": "Which herbs grow in shade?"} for a in (".", "..")]
            assert http.post("/v1/observe", json={"items": dots}).status_code == 200
            listing = http.get("/ui/accounts").text
            assert 'href="/ui/account?id=."' in listing and 'href="/ui/account?id=.."' in listing
            page = http.get("/ui/account", params={"id": ".."})
            assert page.status_code == 200 and '<h1 class="account-id">.. <span' in page.text
            # DNS rebinding: without a token, only requests addressed to a loopback name are served
            for path in ("/ui/accounts", "/v1/accounts"):
                rebound = http.get(path, headers={"host": f"rebind.example:{server.port}"})
                assert rebound.status_code == 403 and rebound.json()["error"]["type"] == "ForeignHost"
                assert http.get(path, headers={"host": f"localhost:{server.port}"}).status_code == 200
    finally:
        server.terminate()


def _asgi(config: ServerConfig):
    """The real app in process, without its lifespan (no model is loaded: pages answer 503)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(config)), base_url="http://127.0.0.1")


def test_signing_out_ends_the_session_and_bad_text_in_forms_or_queries_is_refused(tmp_path):
    async def run() -> None:
        config = ServerConfig(api_token=TOKEN, data_dir=str(tmp_path / "data"))
        async with _asgi(config) as client:
            login = await client.post("/ui/login", data={"token": TOKEN})
            assert login.status_code == 303
            old_cookie = client.cookies["probewatch_console"]
            signed_in = await client.get("/ui/accounts")
            assert signed_in.status_code == 503  # the session lets it in (no model in this app)
            csrf = csrf_of(signed_in.text)  # the sign-out form is on every page
            out = await client.post("/ui/logout", data={"csrf": csrf})
            assert out.status_code == 303 and out.headers["location"] == "/ui/login"
            client.cookies.set("probewatch_console", old_cookie, path="/ui")  # kept by someone, replayed
            again = await client.get("/ui/accounts")
            assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")
            # a form whose percent-escapes are not UTF-8 would name U+FFFD, another account
            bad_form = await client.post(
                "/ui/login", content=b"token=x%FF", headers={"content-type": "application/x-www-form-urlencoded"}
            )
            assert bad_form.status_code == 400 and "not UTF-8" in bad_form.text
            bad_query = await client.get("/ui/actions/forget?account=caf%FF", headers=AUTH)
            assert bad_query.status_code == 400 and bad_query.json()["error"]["type"] == "InvalidParameter"
            client.cookies.set("probewatch_console", "a." + "9" * 5000 + ".x", path="/ui")
            assert (await client.get("/ui/login")).status_code == 200  # a bad cookie is no session, not a 500
            # answers no console handler wrote (no route, wrong method, a bad path) carry its headers too
            for answer in (
                await client.get("/ui/no-such-page", headers=AUTH),
                await client.get("/ui/logout", headers=AUTH),
                await client.get("/ui/accounts/caf%FF", headers=AUTH),
            ):
                assert answer.status_code in (400, 404, 405), answer.status_code
                for name, value in SECURITY_HEADERS.items():
                    assert answer.headers.get(name) == value, (answer.url, name)
            api = await client.get("/v1/no-such-route", headers=AUTH)
            assert api.status_code == 404 and "content-security-policy" not in api.headers

    asyncio.run(run())


def test_pages_need_the_token_or_a_session_and_the_console_can_be_turned_off(tmp_path):
    async def run() -> None:
        config = ServerConfig(api_token=TOKEN, data_dir=str(tmp_path / "data"))
        async with _asgi(config) as client:
            anonymous = await client.get("/ui/accounts")
            assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/ui/login")
            client.cookies.set("probewatch_console", "abc.99999999999.def", path="/ui")
            forged = await client.get("/ui/accounts")
            assert forged.status_code == 303
            client.cookies.clear()
            with_token = await client.get("/ui/accounts", headers=AUTH)
            assert with_token.status_code == 503 and "not ready" in with_token.text  # authorised; no model here
            assert (await client.get("/ui/login")).status_code == 200
            login = await client.post("/ui/login", data={"token": TOKEN, "next": "https://elsewhere.example/"})
            assert login.status_code == 303 and login.headers["location"] == "/ui/accounts"  # never off-site
            cookie = login.headers["set-cookie"]
            assert TOKEN not in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
            assert (await client.get("/ui/accounts")).status_code == 503  # the session cookie lets it in
            value = client.cookies["probewatch_console"]
            client.cookies.set("probewatch_console", value[:-1] + ("0" if value[-1] != "0" else "1"), path="/ui")
            assert (await client.get("/ui/accounts")).status_code == 303  # one character off: back to login
            client.cookies.clear()
            bad = await client.post("/ui/login", data={"token": "nope"})
            assert bad.status_code == 401
            # the JSON API is unchanged: a console session is not an API credential
            assert (await client.get("/v1/accounts")).status_code == 401
        async with _asgi(ServerConfig(api_token=TOKEN, data_dir=str(tmp_path / "data"), console=False)) as client:
            assert (await client.get("/ui/accounts")).status_code == 401  # behind the token like any path
            off = await client.get("/ui/accounts", headers=AUTH)
            assert off.status_code == 404 and "console is off" in off.json()["error"]["message"]

    asyncio.run(run())
