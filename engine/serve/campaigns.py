"""``GET /v1/campaigns`` and ``GET /v1/campaigns/{campaign}``: cross-account campaigns.

A campaign is a set of accounts linked by what they share (a prompt template, a hashed
request-metadata value, a payload region) whose group looks coordinated and extraction-like
against benign groups; only campaigns at ``watch`` or ``flag`` exist. The list gives each
campaign's summary in id order, paginated like ``GET /v1/accounts``; one campaign's report
adds its member account ids and its linking indicators with their features. Metadata values
are never returned (probewatch keeps only salted hashes of them).

Both routes answer 503 ``NotReady`` until the model is loaded and the state restored; an
unknown id is a 404 ``UnknownCampaignError``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..types import Level
from .http import ReadyService

router = APIRouter(tags=["campaigns"])


class CampaignSummary(BaseModel):
    id: str = Field(description="Campaign id (cmp-...); stable while its groups are held.")
    level: Level = Field(description="watch or flag (the level of its highest group).")
    risk: float = Field(description="1 - share of benign groups whose score ever reaches the campaign's.")
    score: float
    size: int = Field(description="Member accounts (each sent at least 2 of the linked queries).")
    queries: int = Field(description="Queries that carry the linking indicators.")
    indicator_kinds: list[str] = Field(description='What links the members: "template", "meta:ip", "payload", ...')
    reasons: list[str] = Field(description="Plain sentences; never a raw metadata value.")
    first_ts: float | None = None
    last_ts: float | None = None
    flagged_at_queries: int | None = Field(None, description="Campaign queries seen when it was first flagged.")


class CampaignPage(BaseModel):
    campaigns: list[CampaignSummary]
    level: Level | None = None
    next_after: str | None = Field(None, description="Pass as `after` for the next page; null on the last page.")


class CampaignIndicator(BaseModel):
    kind: str = Field(description='"template", "meta:<key>" or "payload".')
    label: str = Field(description="A template's anchor words; empty for metadata and payload groups.")
    level: Level
    score: float
    features: dict[str, float | int | None] = Field(description="The group's features (member focus, evidence, ...).")


class CampaignReport(BaseModel):
    id: str
    level: Level
    risk: float
    score: float
    size: int
    queries: int
    members: list[str] = Field(description="Member account ids, most queries first.")
    indicators: list[CampaignIndicator] = Field(description="One entry per linking group, highest score first.")
    reasons: list[str]
    first_ts: float | None = None
    last_ts: float | None = None
    flagged_at_queries: int | None = None


@router.get("/v1/campaigns", response_model=CampaignPage)
async def list_campaigns(
    service: ReadyService,
    level: Annotated[Level | None, Query(description="watch | flag (ok: always empty)")] = None,
    limit: Annotated[int | None, Query(ge=1, description="page size")] = None,
    after: Annotated[str | None, Query(description="return campaigns with ids after this one (next_after)")] = None,
) -> dict[str, Any]:
    """Campaigns at watch or flag now, summaries sorted by id, paginated by id cursor."""
    config = service.config
    size = min(limit or config.page_size_default, config.page_size_max)
    page, next_after = await service.campaign_page(level, after, size)
    return {"campaigns": page, "level": level, "next_after": next_after}


@router.get("/v1/campaigns/{campaign:path}", response_model=CampaignReport)
async def campaign_report(campaign: str, service: ReadyService) -> dict[str, Any]:
    """One campaign: member accounts, linking indicators and their features, reasons, timeline."""
    return await service.campaign(campaign)
