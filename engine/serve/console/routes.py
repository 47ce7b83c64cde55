"""The console's pages under ``/ui``: server-rendered HTML over the same service functions
the JSON API uses (``service.accounts``, ``report``, ``forget``, ``campaign_page``, ...).

Authentication is the API's: the bearer token in a header, or a session cookie set on the
login page from the token (see :mod:`.session`). With ``--no-auth`` (loopback only) no login
is asked. State-changing pages are POST forms behind a confirmation page, each carrying a
CSRF token bound to the SameSite=Strict session cookie; a POST from another origin is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import math
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...detect.features import FEATURES
from ...errors import InputError, UnknownAccountError, UnknownCampaignError
from ...io.validation import check_account
from ...types import LEVELS, Level
from ..service import ObservationService
from . import charts, wording
from .benign import compare_with_benign
from .session import COOKIE_NAME, Session, SessionKeeper


def _console_enabled(request: Request) -> None:
    if not request.app.state.service.config.console:
        raise StarletteHTTPException(404, "the console is off (setting console: false)")


router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(_console_enabled)])

PAGE_SIZE = 50
# Flagged and watched accounts are ranked by how rare their peak is among benign accounts
# while there are at most this many (a report each); past it, by id.
RANK_LIMIT = 500
STYLESHEET = "static/console.css"
SECURITY_HEADERS = {
    # Every asset is the sidecar's own; no script at all.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make a browser send "Origin: null" with forms
    "Cache-Control": "no-store",
}

CSS = files("probewatch.serve.console").joinpath(STYLESHEET).read_text(encoding="utf-8")
templates = Environment(
    loader=PackageLoader("probewatch.serve.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def account_href(account: str) -> str:
    """The console page of ``account``. Ids "." and ".." would be dot segments of the path, which
    browsers resolve away (percent-encoded too), so their pages are reached by query."""
    if account in (".", ".."):
        return f"/ui/account?{urlencode({'id': account})}"
    return f"/ui/accounts/{quote(account, safe='')}"


templates.globals.update(
    one_in=wording.one_in_text,
    when=wording.when_text,
    percent=wording.percent_text,
    feature_title=wording.feature_title,
    reason_sentence=wording.reason_sentence,
    kind_text=wording.indicator_kind_text,
    quote=lambda value: quote(value, safe=""),
    account_href=account_href,
)


def keeper_of(request: Request) -> SessionKeeper:
    """One keeper per app, made on first use from the service's settings."""
    state = request.app.state
    keeper = getattr(state, "console_sessions", None)
    if keeper is None:
        config = state.service.config
        keeper = state.console_sessions = SessionKeeper(config.api_token, config.console_session_ttl_s)
    return keeper


class _Visit:
    """Who is asking, and the session cookie to hand out with the answer (no-auth mode)."""

    def __init__(self, request: Request):
        self.request = request
        self.service: ObservationService = request.app.state.service
        self.keeper = keeper_of(request)
        self.session: Session | None = self.keeper.read(request.cookies.get(COOKIE_NAME))
        self.new_cookie: str | None = None
        self.bearer = self._bearer_ok()
        if self.session is None and self.no_auth:
            self.session, self.new_cookie = self.keeper.issue()

    @property
    def no_auth(self) -> bool:
        return self.service.config.api_token is None

    @property
    def signed_in(self) -> bool:
        return self.no_auth or self.bearer or self.session is not None

    def _bearer_ok(self) -> bool:
        token = self.service.config.api_token
        header = self.request.headers.get("authorization", "")
        if token is None or header[:7].lower() != "bearer ":
            return False
        return hmac.compare_digest(header[7:].strip().encode(), token.encode())

    def csrf(self) -> str:
        return self.keeper.csrf_token(self.session) if self.session is not None else ""

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(template).render(
            csrf=self.csrf(),
            show_logout=self.session is not None and not self.no_auth,
            stylesheet=f"/ui/{STYLESHEET}",
            **context,
        )
        return self.finish(HTMLResponse(html, status_code=status))

    def finish(self, response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if self.new_cookie is not None:
            set_session_cookie(self.request, response, self.new_cookie, self.keeper.ttl_s)
        return response

    def to_login(self) -> Response:
        return self.finish(RedirectResponse(f"/ui/login?{urlencode({'next': _local_path(self.request)})}", 303))


def set_session_cookie(request: Request, response: Response, value: str, ttl_s: float) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        COOKIE_NAME, value, max_age=int(ttl_s), path="/ui", httponly=True, samesite="strict", secure=secure
    )


def _local_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _safe_next(value: str | None) -> str:
    """Where to go after login: a console path of this server only (no open redirect)."""
    if value and value.startswith("/ui") and not value.startswith("//") and not urlsplit(value).netloc:
        return value
    return "/ui/accounts"


class BadFormEncoding(ValueError):
    """A form body or its percent-escapes are not UTF-8."""


async def _form(request: Request) -> dict[str, str]:
    """The form's fields; BadFormEncoding when its text is not UTF-8 (replacing the bad bytes
    would make another account's id, U+FFFD, out of them)."""
    try:
        body = (await request.body()).decode("utf-8")
        fields = parse_qs(body, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadFormEncoding(
            "the form is not UTF-8 text (nor are its percent-escapes); resubmit it from the page"
        ) from exc
    return {key: values[-1] for key, values in fields.items()}


def _same_origin(request: Request) -> bool:
    """A browser names the page a form came from: it must be this server."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _checked_post(visit: _Visit) -> dict[str, str] | Response:
    """The form of an authorised, same-origin POST with a valid CSRF token, or the refusal."""
    if not visit.signed_in:
        return visit.finish(HTMLResponse("sign in first", status_code=401))
    try:
        form = await _form(visit.request)
    except BadFormEncoding as exc:
        return visit.page("message.html", 400, title="Bad form", message=str(exc))
    if visit.bearer and visit.request.headers.get("origin") is None:
        return form  # a script with the token, not a browser: no cookie for another site to ride
    if (
        not _same_origin(visit.request)
        or visit.session is None
        or not visit.keeper.csrf_ok(visit.session, form.get("csrf"))
    ):
        return visit.page(
            "message.html",
            403,
            title="Refused",
            message="This form did not come from a page of this console (missing or wrong CSRF token, or another "
            "origin). Open the page again and resubmit.",
        )
    return form


def _not_ready(visit: _Visit) -> Response | None:
    if visit.service.ready:
        return None
    detail = visit.service.load_error or "the model is loading and state is being restored; retry shortly"
    return visit.page("message.html", 503, title="Not ready", message=f"The sidecar is not ready: {detail}")


# -- login ---------------------------------------------------------------------------------------
@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return _Visit(request).finish(RedirectResponse("/ui/accounts", 303))


@router.get("/login")
async def login_page(request: Request) -> Response:
    visit = _Visit(request)
    target = _safe_next(request.query_params.get("next"))
    if visit.no_auth or visit.session is not None:
        return visit.finish(RedirectResponse(target, 303))
    return visit.page("login.html", next=target, error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    visit = _Visit(request)
    try:
        form = await _form(request)
    except BadFormEncoding as exc:
        return visit.page("message.html", 400, title="Bad form", message=str(exc))
    target = _safe_next(form.get("next"))
    token = visit.service.config.api_token
    if token is None:
        return visit.finish(RedirectResponse(target, 303))
    if not _same_origin(request):
        return visit.page("login.html", 403, next=target, error="This form came from another site.")
    supplied = form.get("token", "").strip().encode()
    if not hmac.compare_digest(supplied, token.encode()):
        return visit.page("login.html", 401, next=target, error="That is not the sidecar's API token.")
    _, cookie = visit.keeper.issue()
    response = RedirectResponse(target, 303)
    set_session_cookie(request, response, cookie, visit.keeper.ttl_s)
    return visit.finish(response)


@router.post("/logout")
async def logout(request: Request) -> Response:
    visit = _Visit(request)
    checked = await _checked_post(visit)
    if isinstance(checked, Response):
        return checked
    if visit.session is not None:  # the cookie stops working here, not only in this browser
        visit.keeper.revoke(visit.session)
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(COOKIE_NAME, path="/ui")
    return visit.finish(response)


@router.get(f"/{STYLESHEET}")
async def stylesheet() -> Response:
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


# -- accounts ----------------------------------------------------------------------------------------
def _page_number(raw: str | None) -> int:
    try:
        return max(int(raw or 1), 1)
    except ValueError:
        return 1


@router.get("/accounts")
async def accounts_page(request: Request) -> Response:
    visit = _Visit(request)
    if not visit.signed_in:
        return visit.to_login()
    if (refusal := _not_ready(visit)) is not None:
        return refusal
    service = visit.service
    params = request.query_params
    level = params.get("level") or None
    if level is not None and level not in LEVELS:
        return visit.page(
            "message.html", 400, title="Bad filter", message=f"level must be one of {', '.join(LEVELS)}; got {level!r}"
        )
    search = (params.get("q") or "").strip()
    page = _page_number(params.get("page"))
    ordered = await _accounts_in_order(service, level, search)
    start = (page - 1) * PAGE_SIZE
    shown = ordered[start : start + PAGE_SIZE]
    reports = [report for report in await asyncio.gather(*(_report_or_none(service, a) for a in shown)) if report]
    counts = {name: len(await service.accounts(name)) for name in LEVELS}
    query = {key: value for key, value in (("level", level), ("q", search)) if value}
    return visit.page(
        "accounts.html",
        reports=reports,
        level=level,
        search=search,
        page=page,
        total=len(ordered),
        first=start + 1,
        last=start + len(shown),
        prev_url=f"/ui/accounts?{urlencode({**query, 'page': page - 1})}" if page > 1 else None,
        next_url=f"/ui/accounts?{urlencode({**query, 'page': page + 1})}" if start + PAGE_SIZE < len(ordered) else None,
        counts=counts,
        levels=LEVELS,
    )


async def _accounts_in_order(service: ObservationService, level: str | None, search: str) -> list[str]:
    """Ids at ``level`` (all when None) whose id contains ``search``: flagged first, then
    watch, then ok; within flag and watch the rarest peak first (while few enough)."""
    needle = search.casefold()
    ordered: list[str] = []
    for name in reversed(LEVELS):  # flag, watch, ok
        if level is not None and name != level:
            continue
        ids = sorted(a for a in await service.accounts(name) if needle in a.casefold())
        if name != Level.OK.value and 1 < len(ids) <= RANK_LIMIT:
            rarity = {}
            for report in await asyncio.gather(*(_report_or_none(service, a) for a in ids)):
                if report is not None:
                    rarity[report["account"]] = report["peak_one_in"]
            ids.sort(key=lambda a: -rarity.get(a, 0.0))
        ordered += ids
    return ordered


async def _report_or_none(service: ObservationService, account: str) -> dict[str, Any] | None:
    try:
        return await service.report(account)
    except UnknownAccountError:  # forgotten or evicted since the ids were read
        return None


@router.get("/account")
async def account_page_by_query(request: Request, id: str = "") -> Response:
    """The page of an account named by ``?id=`` (see :func:`account_href`)."""
    return await account_page(request, id)


@router.get("/accounts/{account:path}")
async def account_page(request: Request, account: str) -> Response:
    visit = _Visit(request)
    if not visit.signed_in:
        return visit.to_login()
    if (refusal := _not_ready(visit)) is not None:
        return refusal
    service = visit.service
    try:
        check_account(account)
    except InputError as exc:
        return visit.page("message.html", 400, title="Bad account id", message=str(exc))
    try:
        report = await service.report(account)
    except UnknownAccountError as exc:
        return visit.page("message.html", 404, title="No such account", message=str(exc))
    calibration = service.engine.calibration
    benign = await asyncio.get_running_loop().run_in_executor(None, compare_with_benign, calibration, report)
    engine_config = service.config.engine
    features = [
        {
            "name": name,
            "reading": reading,
            "chart": charts.feature_chart(name, reading["value"], benign.bands.get(name), benign.lookalikes.get(name)),
            "description": FEATURES.get(name, ""),
        }
        for name, reading in report["features"].items()
    ]
    reasoned = {reason["feature"] for reason in report["reasons"]}
    features.sort(key=lambda f: (f["name"] not in reasoned, f["name"]))
    points = [(p["n_queries"], p["risk"]) for p in report["risk_over_time"]]
    return visit.page(
        "account.html",
        report=report,
        known_benign=service.engine.known_benign(account),
        risk_chart=charts.risk_chart(points, 1.0 / engine_config.watch_fpr, 1.0 / engine_config.target_fpr),
        features=features,
        benign=benign,
        learning_on=bool(engine_config.population_update_every),
        watch_one_in=1.0 / engine_config.watch_fpr,
        flag_one_in=1.0 / engine_config.target_fpr,
    )


# -- actions: a confirmation page (GET), then the POST it submits ---------------------------------
ACTIONS = {
    "forget": (
        "Forget this account?",
        "Its query history, features and statistics are deleted (a privacy deletion); the deletion is journaled and "
        "a snapshot that no longer holds its prompts follows. This cannot be undone.",
        "Forget the account",
    ),
    "mark-benign": (
        "Mark this account known-benign?",
        "You vouch that this account is benign: from now on its feature rows teach the live benign population (the "
        "look-alikes other accounts are compared with) at each refit, whatever its level, which stays as it is. The "
        "mark is journaled; forgetting the account removes it.",
        "Mark known-benign",
    ),
}


@router.get("/actions/{action}")
async def confirm_action(request: Request, action: str) -> Response:
    visit = _Visit(request)
    if not visit.signed_in:
        return visit.to_login()
    if action not in ACTIONS:
        return visit.page("message.html", 404, title="No such action", message=f"unknown action {action!r}")
    account = request.query_params.get("account", "")
    try:
        check_account(account)
    except InputError as exc:
        return visit.page("message.html", 400, title="Bad account id", message=str(exc))
    title, consequence, button = ACTIONS[action]
    return visit.page(
        "confirm.html", title=title, consequence=consequence, button=button, action=action, account=account
    )


@router.post("/actions/{action}")
async def run_action(request: Request, action: str) -> Response:
    visit = _Visit(request)
    checked = await _checked_post(visit)
    if isinstance(checked, Response):
        return checked
    if action not in ACTIONS:
        return visit.page("message.html", 404, title="No such action", message=f"unknown action {action!r}")
    if (refusal := _not_ready(visit)) is not None:
        return refusal
    account = checked.get("account", "")
    if checked.get("confirm") != "yes":
        return visit.page("message.html", 400, title="Not confirmed", message="The action was not confirmed.")
    try:
        if action == "forget":
            done = await visit.service.forget(account)
            message = (
                f"Account {account!r} was forgotten: its history and statistics are deleted."
                if done
                else f"No account {account!r} was held (never observed, or already forgotten)."
            )
        else:
            done = await visit.service.mark_benign(account)
            message = (
                f"Account {account!r} is marked known-benign: its feature rows now teach the benign population."
                if done
                else f"No account {account!r} is held, so nothing was marked."
            )
    except InputError as exc:
        return visit.page("message.html", 400, title="Bad account id", message=str(exc))
    back = "/ui/accounts" if action == "forget" or not done else account_href(account)
    return visit.page(
        "message.html", 200 if done else 404, title="Done" if done else "Nothing done", message=message, back=back
    )


# -- campaigns -------------------------------------------------------------------------------------
@router.get("/campaigns")
async def campaigns_page(request: Request) -> Response:
    visit = _Visit(request)
    if not visit.signed_in:
        return visit.to_login()
    if (refusal := _not_ready(visit)) is not None:
        return refusal
    level = request.query_params.get("level") or None
    if level is not None and level not in ("watch", "flag"):
        return visit.page(
            "message.html", 400, title="Bad filter", message=f"level must be watch or flag; got {level!r}"
        )
    after = request.query_params.get("after") or None
    page, next_after = await visit.service.campaign_page(level, after, PAGE_SIZE)
    page.sort(key=lambda c: (-Level(c["level"]).rank, -c["score"], c["id"]))
    campaign_on = bool(visit.service.config.engine.campaigns)
    query = {"level": level} if level else {}
    return visit.page(
        "campaigns.html",
        campaigns=page,
        level=level,
        campaign_on=campaign_on,
        next_url=f"/ui/campaigns?{urlencode({**query, 'after': next_after})}" if next_after else None,
        one_in_from_risk=wording.one_in_from_risk,
    )


@router.get("/campaigns/{campaign:path}")
async def campaign_page(request: Request, campaign: str) -> Response:
    visit = _Visit(request)
    if not visit.signed_in:
        return visit.to_login()
    if (refusal := _not_ready(visit)) is not None:
        return refusal
    try:
        report = await visit.service.campaign(campaign)
    except UnknownCampaignError as exc:
        return visit.page("message.html", 404, title="No such campaign", message=str(exc))
    kinds = list(dict.fromkeys(indicator["kind"] for indicator in report["indicators"]))
    templates_seen = [i["label"] for i in report["indicators"] if i["kind"] == "template" and i["label"]]
    return visit.page(
        "campaign.html",
        report=report,
        kinds=kinds,
        template_samples=templates_seen,
        timeline=charts.timeline_chart(report["first_ts"], report["last_ts"]),
        one_in_from_risk=wording.one_in_from_risk,
        feature_value=_feature_value,
    )


def _feature_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
