"""What the sidecar's routers share: the one error shape, the service dependency, JSON bodies.

Every HTTP error the sidecar answers has the body ``{"error": {"type", "message", "field"?}}``:
``type`` is the probewatch exception class name where one applies (``InvalidAccountError``,
``UnknownAccountError``, ...) or a short stable name (``Unauthorized``, ``PayloadTooLarge``,
``InvalidJSON``, ``InvalidBody``, ``InvalidParameter``, ``NotReady``, ...); ``field`` names
the request field or parameter at fault, when there is one.

>>> error_document("InvalidParameter", "limit must be >= 1", field="limit")
{'error': {'type': 'InvalidParameter', 'message': 'limit must be >= 1', 'field': 'limit'}}
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from .service import ObservationService


class RequestError(Exception):
    """An HTTP error status with the sidecar's error body; raised by routes and dependencies."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.field = field
        self.headers = headers


def error_document(error_type: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def error_response(
    status: int, error_type: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_document(error_type, message, field), status_code=status, headers=headers)


def get_service(request: Request) -> ObservationService:
    """The app's :class:`ObservationService` (a FastAPI dependency)."""
    return request.app.state.service


def require_ready(service: ObservationService) -> None:
    """503 ``NotReady`` until the model is loaded and the state restored."""
    if not service.ready:
        detail = service.load_error or "the model is loading and state is being restored; retry shortly"
        raise RequestError(503, "NotReady", f"not ready: {detail}")


Service = Annotated[ObservationService, Depends(get_service)]


def get_ready_service(service: Service) -> ObservationService:
    """The service, once it is ready (a FastAPI dependency; see :func:`require_ready`)."""
    require_ready(service)
    return service


ReadyService = Annotated[ObservationService, Depends(get_ready_service)]


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON, or a 400 saying why it is not."""
    try:
        body = await request.body()
    except ClientDisconnect:  # the client left, or the Gatekeeper already answered 413
        raise RequestError(400, "ClientDisconnected", "the client disconnected before the body was read") from None
    if not body:
        raise RequestError(400, "InvalidJSON", "the request body is empty; send JSON")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "InvalidJSON", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise RequestError(
            400, "InvalidJSON", "the request body nests arrays or objects too deeply to parse; send a flat document"
        ) from None
