"""Structured logs: the JSON line format, account ids only as a keyed hash, X-Request-ID, the settings."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from probewatch.errors import ConfigError
from probewatch.serve import ServerConfig, create_app, runner
from probewatch.serve.config import load_config
from probewatch.serve.logs import (
    JsonFormatter,
    RequestIdFilter,
    account_fields,
    account_hash,
    configure_account_logging,
    request_id,
    request_id_from,
)

ACCOUNT = "acct-raw-id-7f3e91"


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A probewatch logger writing JSON lines to a buffer; the account-logging settings reset after."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("probewatch.test_json_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)
        configure_account_logging()


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_line_parses_and_has_the_fields(json_log):
    logger, buffer = json_log
    logger.info("batch of %d items", 3, extra={"kind": "batch"})
    token = request_id.set("req-42")
    try:
        logger.warning("inside a request")
    finally:
        request_id.reset(token)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    first, second, third = lines(buffer)
    assert first["event"] == "batch of 3 items" and first["level"] == "info" and first["kind"] == "batch"
    assert first["logger"] == "probewatch.test_json_logs" and "request_id" not in first
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["request_id"] == "req-42" and second["level"] == "warning"
    assert third["level"] == "error" and "ValueError: boom" in third["exc_info"]


def test_account_ids_are_hashed_by_default_and_consistently(json_log):
    logger, buffer = json_log
    configure_account_logging()  # the default: a random key for this process
    logger.debug("item not observed", extra=account_fields(ACCOUNT))
    logger.debug("item not observed again", extra=account_fields(ACCOUNT))
    logger.debug("another account", extra=account_fields("someone-else"))
    assert ACCOUNT not in buffer.getvalue()
    first, second, other = lines(buffer)
    assert first["account_hash"] == second["account_hash"] == account_hash(ACCOUNT)
    assert len(first["account_hash"]) == 16 and int(first["account_hash"], 16) >= 0
    assert other["account_hash"] != first["account_hash"] and "account" not in first
    # a configured key gives the same hash in every process; a different key a different one
    configure_account_logging(key="shared-secret-key")
    keyed = account_hash(ACCOUNT)
    configure_account_logging(key="shared-secret-key")
    assert account_hash(ACCOUNT) == keyed != first["account_hash"]
    configure_account_logging(log_account_ids=True)
    assert account_fields(ACCOUNT) == {"account": ACCOUNT}


def test_the_guardrail_logs_no_raw_account_id(json_log, caplog):
    configure_account_logging()
    from probewatch.serve import guardrail

    class RefusingService:
        class config:  # stands in for the ServerConfig
            guardrail_account_field = "user_api_key_hash"
            guardrail_prompt_source = "last_user"
            guardrail_request_meta = False

        def prepare_item(self, account, *_args):
            from probewatch.errors import InvalidAccountError

            raise InvalidAccountError(f"bad account {account!r}")

    payload = {"request_data": {"user_api_key_hash": ACCOUNT}, "texts": ["hello"]}
    with caplog.at_level(logging.DEBUG, logger="probewatch.serve"):
        account, texts = guardrail._texts_to_observe(payload, RefusingService())
        assert guardrail._items(RefusingService(), account, (texts.prompt,), payload, 0.0) is None
    records = [r for r in caplog.records if "not observed" in r.getMessage()]
    assert records and all(ACCOUNT not in r.getMessage() for r in records)
    assert records[0].account_hash == account_hash(ACCOUNT)
    formatted = JsonFormatter().format(records[0])
    assert ACCOUNT not in formatted and json.loads(formatted)["account_hash"] == account_hash(ACCOUNT)


def test_request_id_is_echoed_or_replaced_and_reaches_the_log(tmp_path, json_log):
    logger, buffer = json_log
    gatekeeper = create_app(ServerConfig(data_dir=str(tmp_path), api_token="a-secret-token-0123456789"))

    async def inner(scope, receive, send):  # stands in for the FastAPI app: logs, then answers
        logger.info("handling")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    gatekeeper.app = inner

    async def ask(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=gatekeeper)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/healthz", headers=headers)

    given = asyncio.run(ask({"X-Request-ID": "client-req-1"}))
    assert given.status_code == 200 and given.headers["x-request-id"] == "client-req-1"
    generated = asyncio.run(ask({}))
    too_long = asyncio.run(ask({"X-Request-ID": "x" * 129}))
    control = asyncio.run(ask({"X-Request-ID": "a\tb"}))
    ids = [r.headers["x-request-id"] for r in (generated, too_long, control)]
    assert all(len(rid) == 32 and rid.isalnum() for rid in ids) and len(set(ids)) == 3
    assert [entry["request_id"] for entry in lines(buffer)] == ["client-req-1", *ids]
    assert request_id.get() is None  # reset after each request

    # the Gatekeeper's own answers (401 here) carry it too
    async def unauthorized() -> httpx.Response:
        transport = httpx.ASGITransport(app=gatekeeper)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/v1/accounts", headers={"X-Request-ID": "r-401"})

    refused = asyncio.run(unauthorized())
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "r-401"


def test_request_id_validation():
    assert request_id_from(b"abc-123") == "abc-123"
    assert request_id_from(b"x" * 128) == "x" * 128
    for bad in (None, b"", b"x" * 129, b"a\x00b", b"\xc3\xa9t\xc3\xa9", b" padded "):
        assert len(request_id_from(bad)) == 32


def test_log_format_setting_from_environment_yaml_and_flag(tmp_path, monkeypatch):
    assert ServerConfig().log_format == "text" and ServerConfig().log_account_ids is False
    env = {"PROBEWATCH_LOG_FORMAT": "json", "PROBEWATCH_LOG_ACCOUNT_IDS": "true", "PROBEWATCH_LOG_HASH_KEY": "k" * 20}
    config = load_config(env=env)
    assert (config.log_format, config.log_account_ids, config.log_hash_key) == ("json", True, "k" * 20)
    assert config.public_dict()["log_hash_key"] == "<set>"
    path = tmp_path / "sidecar.yaml"
    path.write_text("log_format: json\n", encoding="utf-8")
    assert load_config(path, env={}).log_format == "json"
    with pytest.raises(ConfigError) as raised:
        load_config(env={"PROBEWATCH_LOG_FORMAT": "xml"})
    assert (
        "log_format" in str(raised.value) and "'text' or 'json'" in str(raised.value) and "'xml'" in str(raised.value)
    )

    seen: list[ServerConfig] = []
    monkeypatch.setattr(runner, "run", seen.append)
    monkeypatch.delenv("PROBEWATCH_LOG_FORMAT", raising=False)
    monkeypatch.delenv("PROBEWATCH_API_TOKEN", raising=False)
    assert runner.main_serve(["--no-auth", "--log-format", "json", "--data-dir", str(tmp_path)]) == 0
    assert seen[0].log_format == "json"
    with pytest.raises(SystemExit):
        runner.main_serve(["--no-auth", "--log-format", "xml"])


def test_configure_logging_installs_the_json_formatter():
    logger, server_logger = logging.getLogger("probewatch"), logging.getLogger("uvicorn")
    saved = (list(logger.handlers), logger.level, list(server_logger.handlers))
    logger.handlers, server_logger.handlers = [], []
    try:
        runner._configure_logging(ServerConfig(log_format="json", log_level="warning"))
        assert isinstance(logger.handlers[0].formatter, JsonFormatter) and logger.level == logging.WARNING
        assert server_logger.handlers == logger.handlers
        runner._configure_logging(ServerConfig())
        assert not isinstance(logger.handlers[0].formatter, JsonFormatter)
    finally:
        logger.handlers, server_logger.handlers = saved[0], saved[2]
        logger.setLevel(saved[1])
        configure_account_logging()
