"""A thin client for the probewatch sidecar (``probewatch serve``). Needs ``httpx``::

    from probewatch.client import Client

    with Client("http://127.0.0.1:8321", token="...") as pw:
        verdict = pw.observe("acct-1", "Summarise this article ...")
        if verdict["flagged"]:
            ...

Results are the service's JSON as dicts. An HTTP error raises :class:`SidecarError` with
the status and what the sidecar's error body ``{"error": {"type", "message", "field"?}}``
says; a per-item error inside a 200 batch does not raise (look for the ``error`` key of that
item).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ProbewatchError

DEFAULT_URL = "http://127.0.0.1:8321"


class SidecarError(ProbewatchError):
    """The sidecar answered with an HTTP error status (or could not be reached: status 0,
    ``error_type`` ``"Unreachable"``).

    ``error_type`` is the error body's ``type`` (``"Unauthorized"``, ``"UnknownAccountError"``,
    ...) and ``field`` the request field or parameter at fault, when the sidecar names one.
    """

    def __init__(
        self, status: int, message: str, body: Any = None, error_type: str | None = None, field: str | None = None
    ):
        answered = f"{status} {error_type}" if error_type else str(status)
        super().__init__(f"probewatch sidecar answered {answered}: {message}")
        self.status = status
        self.message = message
        self.body = body
        self.error_type = error_type
        self.field = field


def _items(items: Iterable[Mapping[str, Any] | tuple]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if isinstance(item, Mapping):
            out.append(dict(item))
        else:
            account, prompt, *rest = item
            out.append({"account": account, "prompt": prompt, **({"ts": rest[0]} if rest else {})})
    return out


def _raise_for(response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    status = response.status_code
    if status < 400 or (status == 422 and isinstance(body, dict) and "results" in body):
        return body  # a 422 with results is a batch whose every item was invalid: per-item errors inside
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):  # not the sidecar answering (a proxy in between, say)
        raise SidecarError(status, str(body) or response.reason_phrase, body)
    message = error.get("message") or response.reason_phrase
    raise SidecarError(status, message, body, error.get("type"), error.get("field"))


def _headers(token: str | None) -> dict[str, str]:
    token = token if token is not None else os.environ.get("PROBEWATCH_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class Client:
    """Synchronous client; ``token`` defaults to $PROBEWATCH_API_TOKEN."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0, **httpx_kwargs):
        import httpx

        self._http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout, **httpx_kwargs)
        self._httpx = httpx

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            return _raise_for(self._http.request(method, path, **kwargs))
        except self._httpx.TransportError as exc:
            raise SidecarError(0, f"cannot reach the sidecar: {exc}", error_type="Unreachable") from exc

    def observe(self, account: str, prompt: str, ts: float | None = None) -> dict[str, Any]:
        """One verdict dict (``level``, ``flagged``, ``risk``, ``action`` ...)."""
        result = self.observe_many([(account, prompt) if ts is None else (account, prompt, ts)])[0]
        if "error" in result:
            raise SidecarError(422, result["error"]["message"], result, result["error"]["type"])
        return result

    def observe_many(self, items: Iterable[Mapping[str, Any] | tuple]) -> list[dict[str, Any]]:
        """One result per item, in order: a verdict, or ``{"index", "error"}``."""
        return self._call("POST", "/v1/observe", json={"items": _items(items)})["results"]

    def report(self, account: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/accounts/{account}")

    def accounts(self, level: str | None = None, limit: int | None = None, after: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("level", level), ("limit", limit), ("after", after)) if v is not None}
        return self._call("GET", "/v1/accounts", params=params)

    def forget(self, account: str) -> bool:
        return self._call("DELETE", f"/v1/accounts/{account}")["forgotten"]

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except self._httpx.TransportError:
            return False

    def metrics(self) -> str:
        response = self._http.get("/metrics")
        if response.status_code >= 400:
            _raise_for(response)
        return response.text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same calls for asyncio code."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0, **httpx_kwargs):
        import httpx

        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(token), timeout=timeout, **httpx_kwargs)
        self._httpx = httpx

    async def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            return _raise_for(await self._http.request(method, path, **kwargs))
        except self._httpx.TransportError as exc:
            raise SidecarError(0, f"cannot reach the sidecar: {exc}", error_type="Unreachable") from exc

    async def observe(self, account: str, prompt: str, ts: float | None = None) -> dict[str, Any]:
        result = (await self.observe_many([(account, prompt) if ts is None else (account, prompt, ts)]))[0]
        if "error" in result:
            raise SidecarError(422, result["error"]["message"], result, result["error"]["type"])
        return result

    async def observe_many(self, items: Iterable[Mapping[str, Any] | tuple]) -> list[dict[str, Any]]:
        return (await self._call("POST", "/v1/observe", json={"items": _items(items)}))["results"]

    async def report(self, account: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/accounts/{account}")

    async def forget(self, account: str) -> bool:
        return (await self._call("DELETE", f"/v1/accounts/{account}"))["forgotten"]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
