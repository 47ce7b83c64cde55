"""The sidecar's log lines: plain text or one JSON object a line, a request id per request, and
account ids logged only as a keyed hash unless ``log_account_ids`` is set: a log call about an
account passes ``extra=account_fields(account)``.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_CHARS = 128

# the id of the request whose code is running (set by the Gatekeeper), for every log record it makes
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("probewatch_request_id", default=None)

_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
    "color_message",
}
_account_key = secrets.token_bytes(32)  # per process unless log_hash_key is configured
_log_account_ids = False


def configure_account_logging(log_account_ids: bool = False, key: str | None = None) -> None:
    """How :func:`account_fields` shows an account: raw (``log_account_ids``) or hashed with ``key``
    (None: a random key for this process, so hashes match only within one run)."""
    global _account_key, _log_account_ids
    _log_account_ids = log_account_ids
    _account_key = key.encode() if key is not None else secrets.token_bytes(32)


def account_hash(account: str) -> str:
    """HMAC-SHA256 of the account id under the log key, first 16 hex characters."""
    return hmac.new(_account_key, str(account).encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]


def account_fields(account: str) -> dict[str, str]:
    """The ``extra=`` of a log call about ``account``: ``{"account_hash": ...}`` (or the raw id if configured)."""
    return {"account": str(account)} if _log_account_ids else {"account_hash": account_hash(account)}


def new_request_id() -> str:
    return secrets.token_hex(16)


def request_id_from(header: bytes | None) -> str:
    """The client's ``X-Request-ID`` if it is printable ASCII of at most 128 characters; else a new one."""
    if header:
        try:
            text = header.decode("ascii")
        except UnicodeDecodeError:
            return new_request_id()
        if len(text) <= MAX_REQUEST_ID_CHARS and text.isprintable() and text.strip() == text:
            return text
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current request id on each record (``record.request_id``, None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a record: ts (ISO 8601 UTC), level, logger, event (the message), request_id
    when known, the record's structured extras, and exc_info as text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            out["request_id"] = rid
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
