"""Operations routes, open without a token: ``/healthz`` (liveness), ``/readyz`` (readiness)
and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from .http import Service, error_document
from .metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(service: Service) -> dict[str, Any] | JSONResponse:
    """Readiness: the model is loaded and state restored from snapshot and journal (else 503)."""
    if service.ready:
        ready = {"status": "ready", "snapshot_seq": service.covered_seq, "journal_seq": service.journal.last_seq}
        if service.engine.memory_pressure is not None:  # still ready: detection holds, at a cost
            ready["memory_pressure"] = service.engine.memory_pressure
        return ready
    if service.load_error:
        status, message = "failed", service.load_error
    else:
        status, message = "loading", "the model is loading and state is being restored; retry shortly"
    return JSONResponse({"status": status, **error_document("NotReady", message)}, status_code=503)


@router.get("/metrics", response_class=Response)
async def metrics(service: Service) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
