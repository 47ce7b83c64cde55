"""A thin client for the probewatch sidecar (``probewatch serve``). Needs ``httpx``::

    from probewatch.client import Client

    with Client("http://127.0.0.1:8321", token="...") as pw:
        verdict = pw.observe("acct-1", "Summarise this article ...", meta={"ip": "203.0.113.7"})
        if verdict["flagged"]:
            ...
        for campaign in pw.campaigns(level="flag")["campaigns"]:
            print(pw.campaign(campaign["id"])["members"])

Results are the service's JSON as dicts. An HTTP error raises :class:`SidecarError` with
the status and what the sidecar's error body ``{"error": {"type", "message", "field"?}}``
says (a batch with an item that breaks the schema is one 422 naming ``items[i].field``,
nothing observed; 429 ``Overloaded`` / ``RateLimited`` carry ``retry_after``). A prompt
that cannot be observed is that item's error inside a 200 batch and does not raise with
:meth:`Client.observe_many` (look for the ``error`` key of that item).
``client_id`` is sent as the sidecar's rate-limit client header (``x-probewatch-client``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from .errors import ProbewatchError

DEFAULT_URL = "http://127.0.0.1:8321"
CLIENT_HEADER = "x-probewatch-client"  # the sidecar's default rate_limit_client_header


class SidecarError(ProbewatchError):
    """The sidecar answered with an HTTP error status (or could not be reached: status 0,
    ``error_type`` ``"Unreachable"``).

    ``error_type`` is the error body's ``type`` (``"Unauthorized"``, ``"UnknownAccountError"``,
    ...) and ``field`` the request field or parameter at fault, when the sidecar names one.
    """

    def __init__(
        self,
        status: int,
        message: str,
        body: Any = None,
        error_type: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ):
        answered = f"{status} {error_type}" if error_type else str(status)
        super().__init__(f"probewatch sidecar answered {answered}: {message}")
        self.status = status
        self.message = message
        self.body = body
        self.error_type = error_type
        self.field = field
        self.retry_after = retry_after  # seconds, from Retry-After (429, 503)


def _items(items: Iterable[Mapping[str, Any] | tuple]) -> list[dict[str, Any]]:
    """Request items from mappings (``{account, prompt, ts?, meta?}``) or tuples
    ``(account, prompt[, ts[, meta]])``; a None ts or meta is left out."""
    out = []
    for item in items:
        if isinstance(item, Mapping):
            out.append(dict(item))
        else:
            account, prompt, *rest = item
            ts, meta = (*rest, None, None)[:2]
            out.append(_item(account, prompt, ts, meta))
    return out


def _item(account: str, prompt: str, ts: float | None, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    item: dict[str, Any] = {"account": account, "prompt": prompt}
    if ts is not None:
        item["ts"] = ts
    if meta is not None:
        item["meta"] = dict(meta)
    return item


def _segment(value: str) -> str:
    """``value`` as one URL path segment: every reserved character percent-encoded (an id
    holding ``?``, ``#``, ``/`` or ``%`` reaches the sidecar whole), and ``.`` / ``..``
    spelled ``%2E`` so that no URL normalisation turns them into a step up the path."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _account_path(account: str) -> str:
    return f"/v1/accounts/{_segment(account)}"


def _campaign_path(campaign_id: str) -> str:
    return f"/v1/campaigns/{_segment(campaign_id)}"


def _page_params(level: str | None, limit: int | None, after: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("level", level), ("limit", limit), ("after", after)) if v is not None}


def _single(result: dict[str, Any]) -> dict[str, Any]:
    """The one result of a one-item observe; its item error raised."""
    if "error" in result:
        error = result["error"] if isinstance(result["error"], dict) else {}
        raise SidecarError(422, str(error.get("message", result["error"])), result, error.get("type"))
    return result


def _unexpected(status: int, what: str, body: Any = None) -> SidecarError:
    """An answer that is not the sidecar's (a proxy's page, a cut body): what a caller that fails
    open on :class:`SidecarError` must see, never a KeyError from reading it."""
    return SidecarError(status, f"the answer is not the sidecar's: {what}", body, error_type="UnexpectedAnswer")


def _results(body: dict[str, Any], n_items: int) -> list[dict[str, Any]]:
    results = body.get("results")
    if not isinstance(results, list) or len(results) != n_items or not all(isinstance(r, dict) for r in results):
        count = len(results) if isinstance(results, list) else type(results).__name__
        raise _unexpected(200, f"expected {n_items} results, one object per item; got {count}", body)
    return results


def _forgotten(body: dict[str, Any]) -> bool:
    if not isinstance(body.get("forgotten"), bool):
        raise _unexpected(200, "expected {account, forgotten}", body)
    return body["forgotten"]


def _raise_for(response) -> Any:
    """The JSON object of a 2xx answer; :class:`SidecarError` for anything else."""
    try:
        body = response.json()
    except ValueError:  # RecursionError is not one: json.loads raises it for deep nesting
        body = response.text
    except RecursionError:
        body = response.text[:200]
    status = response.status_code
    if 300 <= status < 400:  # never followed by default: the token goes only to the configured host
        location = response.headers.get("location", "")
        raise SidecarError(status, f"redirected to {location[:200]!r}; point the client at the sidecar itself", body)
    if status < 300:
        if not isinstance(body, dict):
            raise _unexpected(status, f"expected a JSON object; got {str(body)[:100]!r}", body)
        return body
    retry_after = _seconds(response.headers.get("retry-after"))
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):  # not the sidecar answering (a proxy in between, say)
        raise SidecarError(status, str(body) or response.reason_phrase, body, retry_after=retry_after)
    message = error.get("message") or response.reason_phrase
    raise SidecarError(status, message, body, error.get("type"), error.get("field"), retry_after)


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds to wait: a finite number, 0 or more; None for anything else."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # an HTTP date: not what the sidecar sends
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _failure(httpx, exc: Exception) -> SidecarError:
    """An httpx error as a SidecarError: unreachable (connect, read, timeouts), or an answer that
    could not be read (a body that does not decode, a redirect loop)."""
    if isinstance(exc, httpx.TransportError):
        return SidecarError(0, f"cannot reach the sidecar: {exc}", error_type="Unreachable")
    return _unexpected(0, f"{type(exc).__name__}: {exc}")


def _metrics_text(response) -> str:
    if response.status_code >= 300:
        _raise_for(response)
    return response.text


def _headers(token: str | None, client_id: str | None = None) -> dict[str, str]:
    token = token if token is not None else os.environ.get("PROBEWATCH_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if client_id:
        headers[CLIENT_HEADER] = client_id
    return headers


class Client:
    """Synchronous client; ``token`` defaults to $PROBEWATCH_API_TOKEN."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10.0,
        client_id: str | None = None,
        **httpx_kwargs,
    ):
        import httpx

        headers = _headers(token, client_id)
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, **httpx_kwargs)
        self._httpx = httpx

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            return _raise_for(self._http.request(method, path, **kwargs))
        except self._httpx.HTTPError as exc:
            raise _failure(self._httpx, exc) from exc

    def observe(
        self, account: str, prompt: str, ts: float | None = None, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One verdict dict (``level``, ``flagged``, ``risk``, ``action``, ``campaign`` ...).
        ``meta``: optional request metadata (``ip``, ``network``, ``user_agent``, ``org``,
        ``payment``, ``key_created``); an invalid one, or a prompt that cannot be observed,
        raises :class:`SidecarError` (422)."""
        return _single(self.observe_many([_item(account, prompt, ts, meta)])[0])

    def observe_many(self, items: Iterable[Mapping[str, Any] | tuple]) -> list[dict[str, Any]]:
        """One result per item, in order: a verdict, or ``{"index", "error"}`` for a prompt that
        cannot be observed (an item breaking the schema raises for the whole batch). Items are
        ``{account, prompt, ts?, meta?}`` mappings or ``(account, prompt[, ts[, meta]])`` tuples."""
        sent = _items(items)
        return _results(self._call("POST", "/v1/observe", json={"items": sent}), len(sent))

    def report(self, account: str) -> dict[str, Any]:
        return self._call("GET", _account_path(account))

    def accounts(self, level: str | None = None, limit: int | None = None, after: str | None = None) -> dict[str, Any]:
        """``{"accounts": [ids], "level", "next_after"}``: one page of account ids, sorted."""
        return self._call("GET", "/v1/accounts", params=_page_params(level, limit, after))

    def forget(self, account: str) -> bool:
        return _forgotten(self._call("DELETE", _account_path(account)))

    def campaigns(self, level: str | None = None, limit: int | None = None, after: str | None = None) -> dict[str, Any]:
        """``{"campaigns": [summaries], "level", "next_after"}``: one page of the campaigns at
        watch or flag, sorted by id; pass ``next_after`` as ``after`` for the next page."""
        return self._call("GET", "/v1/campaigns", params=_page_params(level, limit, after))

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        """One campaign's report (members, indicators, reasons); 404 ``UnknownCampaignError``
        raises :class:`SidecarError`."""
        return self._call("GET", _campaign_path(campaign_id))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except self._httpx.HTTPError:
            return False

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        try:
            response = self._http.get("/metrics")
        except self._httpx.HTTPError as exc:
            raise _failure(self._httpx, exc) from exc
        return _metrics_text(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same calls for asyncio code."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10.0,
        client_id: str | None = None,
        **httpx_kwargs,
    ):
        import httpx

        headers = _headers(token, client_id)
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, **httpx_kwargs)
        self._httpx = httpx

    async def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            return _raise_for(await self._http.request(method, path, **kwargs))
        except self._httpx.HTTPError as exc:
            raise _failure(self._httpx, exc) from exc

    async def observe(
        self, account: str, prompt: str, ts: float | None = None, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return _single((await self.observe_many([_item(account, prompt, ts, meta)]))[0])

    async def observe_many(self, items: Iterable[Mapping[str, Any] | tuple]) -> list[dict[str, Any]]:
        sent = _items(items)
        return _results(await self._call("POST", "/v1/observe", json={"items": sent}), len(sent))

    async def report(self, account: str) -> dict[str, Any]:
        return await self._call("GET", _account_path(account))

    async def accounts(
        self, level: str | None = None, limit: int | None = None, after: str | None = None
    ) -> dict[str, Any]:
        return await self._call("GET", "/v1/accounts", params=_page_params(level, limit, after))

    async def forget(self, account: str) -> bool:
        return _forgotten(await self._call("DELETE", _account_path(account)))

    async def campaigns(
        self, level: str | None = None, limit: int | None = None, after: str | None = None
    ) -> dict[str, Any]:
        return await self._call("GET", "/v1/campaigns", params=_page_params(level, limit, after))

    async def campaign(self, campaign_id: str) -> dict[str, Any]:
        return await self._call("GET", _campaign_path(campaign_id))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except self._httpx.HTTPError:
            return False

    async def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        try:
            response = await self._http.get("/metrics")
        except self._httpx.HTTPError as exc:
            raise _failure(self._httpx, exc) from exc
        return _metrics_text(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
