"""``GET /v1/accounts``, ``GET /v1/accounts/{account}``, ``DELETE /v1/accounts/{account}``.

Every route answers 503 ``NotReady`` until the model is loaded and the state restored; an
invalid account id is a 422 ``InvalidAccountError``, an account never seen (or forgotten) a
404 ``UnknownAccountError``.
"""

from __future__ import annotations

import bisect
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ..io.validation import check_account
from ..types import Level
from .http import ReadyService

router = APIRouter(tags=["accounts"])


@router.get("/v1/accounts")
async def list_accounts(
    service: ReadyService,
    level: Annotated[Level | None, Query(description="ok | watch | flag")] = None,
    limit: Annotated[int | None, Query(ge=1, description="page size")] = None,
    after: Annotated[str | None, Query(description="return ids after this one (next_after)")] = None,
) -> dict[str, Any]:
    """Account ids held now, sorted, paginated by id cursor."""
    config = service.config
    size = min(limit or config.page_size_default, config.page_size_max)
    ids = sorted(await service.accounts(level))
    if after is not None:
        ids = ids[bisect.bisect_right(ids, after) :]
    page = ids[:size]
    return {"accounts": page, "level": level, "next_after": page[-1] if len(ids) > size else None}


@router.get("/v1/accounts/{account:path}")
async def account_report(account: str, service: ReadyService) -> dict[str, Any]:
    """The account's report: history size, features with benign percentiles, risk over time."""
    check_account(account)
    return await service.report(account)


@router.delete("/v1/accounts/{account:path}")
async def forget_account(account: str, service: ReadyService) -> dict[str, Any]:
    """Forget an account (privacy requests); journaled, and a snapshot follows."""
    existed = await service.forget(account)
    return {"account": account, "forgotten": existed}
