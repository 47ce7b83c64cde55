"""The shipped Prometheus alert rules and Grafana dashboard against the sidecar's real /metrics.

`promtool check rules` is a Go binary that no Python registry ships, so this is the parser
test in its place: the rules file's schema (groups, unique alert names, expr / for /
severity / summary, valid durations), the dashboard's shape (unique panel ids, a query in
every panel), and every metric and label name either file queries checked against the
exposition of an app built in-process (``create_app``, asked over ASGI for ``/metrics``).
A metric renamed in ``engine/serve/metrics.py`` or misspelt in a doc fails here.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import TOKEN

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "docs" / "grafana" / "probewatch.json"

# Prometheus's duration syntax (units in decreasing order, each at most once).
DURATION = re.compile(r"^(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus attaches to every scraped series, and the histogram bucket bound.
TARGET_LABELS = {"job", "instance"}
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv", "exp", "floor",
    "group", "histogram_quantile", "idelta", "increase", "irate", "label_replace", "last_over_time", "max",
    "max_over_time", "min", "min_over_time", "predict_linear", "quantile", "quantile_over_time", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "stddev", "stdvar", "sum", "sum_over_time",
    "time", "timestamp", "topk", "vector",
}  # fmt: skip
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


# -- the sidecar's exposition ---------------------------------------------------------------------
def _series_names(family_name: str, family_type: str) -> set[str]:
    """The sample names a family can expose (a labelled family with no children exposes none yet)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }.get(family_type, ("",))
    return {family_name + suffix for suffix in suffixes}


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> dict[str, set[str]]:
    """{series name: its label names} from a real app's GET /metrics (the engine need not load:
    every family is declared, with its TYPE, before the first observation)."""
    from probewatch.serve import ServerConfig, create_app

    app = create_app(ServerConfig(data_dir=str(tmp_path_factory.mktemp("metrics")), api_token=TOKEN))

    async def scrape() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            return await client.get("/metrics")

    reply = asyncio.run(scrape())
    assert reply.status_code == 200, reply.text
    labels_by_family = _declared_labels(app)
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(reply.text):
        declared = labels_by_family.get(family.name, set())
        for name in _series_names(family.name, family.type):
            series.setdefault(name, set()).update(declared)
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    for name in series:
        if name.endswith("_bucket"):
            series[name].add("le")
    assert "probewatch_verdicts_total" in series and "probewatch_queue_depth" in series, sorted(series)
    return series


def _declared_labels(app) -> dict[str, set[str]]:
    """Label names of the labelled counters and histograms, which expose no sample (so no label)
    until a child is first used. prometheus_client keeps them on ``_labelnames``."""
    labels: dict[str, set[str]] = {}
    for collector in list(app.metrics.registry._collector_to_names):
        names = getattr(collector, "_labelnames", None)
        if names:
            labels[collector._name] = set(names)
    return labels


# -- PromQL: the metric and label names an expression uses ------------------------------------------
def promql_names(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, {metric name: label names in its selector}, label names in by/on/... lists).

    Not a PromQL parser: strings, Grafana variables, ranges and numbers are removed, and what is
    left that is not a function or keyword is a metric name."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{\w+\}|\$\w+", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    grouping: set[str] = set()
    for match in GROUPING.finditer(text):
        grouping.update(label.strip() for label in match.group(2).split(",") if label.strip())
    text = GROUPING.sub(" ", text)
    selectors: dict[str, set[str]] = {}
    for match in SELECTOR.finditer(text):
        labels = set(MATCHER_LABEL.findall(match.group(2)))
        if match.group(1) is None:
            name = next((value for label, value in _matchers(match.group(2)) if label == "__name__"), "")
            labels.discard("__name__")
        else:
            name = match.group(1)
        selectors.setdefault(name, set()).update(labels)
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    metrics = set()
    for match in IDENTIFIER.finditer(text):
        word = match.group(0)
        if word in PROMQL_KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
        elif word not in PROMQL_FUNCTIONS:
            metrics.add(word)
    return metrics, selectors, grouping


def _matchers(body: str) -> list[tuple[str, str]]:
    return re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"', body)


def check_expr(expr: str, series: dict[str, set[str]]) -> list[str]:
    """Problems with one expression: unknown metrics, labels a metric does not have."""
    metrics, selectors, grouping = promql_names(expr)
    problems = [f"unknown metric {name!r}" for name in sorted(metrics) if name not in series]
    known_labels = set(TARGET_LABELS)
    for name in metrics & series.keys():
        known_labels |= series[name]
    for name, labels in selectors.items():
        if name in series:
            problems += [f"{name} has no label {label!r}" for label in sorted(labels - series[name] - TARGET_LABELS)]
    problems += [f"no metric here has label {label!r}" for label in sorted(grouping - known_labels)]
    return problems


# -- the files ------------------------------------------------------------------------------------
def load_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    assert isinstance(document, dict) and set(document) == {"groups"}, "the file is a rules file: groups only"
    return document["groups"]


def all_alert_rules() -> list[dict]:
    return [rule for group in load_rules() for rule in group["rules"]]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, those nested in collapsed rows included."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_targets() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(load_dashboard())
        for target in panel.get("targets", [])
    ]


# -- tests ----------------------------------------------------------------------------------------
def test_rules_file_has_the_schema_promtool_checks():
    groups = load_rules()
    assert groups, "no rule groups"
    group_names = [group["name"] for group in groups]
    assert len(group_names) == len(set(group_names)), f"duplicate group names: {group_names}"
    alerts = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.keys()
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            name = rule.get("alert")
            assert name and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name), f"bad or missing alert name: {rule}"
            alerts.append(name)
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule.keys()
            assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), f"{name}: no expr"
            assert DURATION.match(str(rule.get("for", ""))), f"{name}: 'for' is not a duration: {rule.get('for')!r}"
            assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity not in {SEVERITIES}"
            annotations = rule.get("annotations", {})
            assert annotations.get("summary", "").strip(), f"{name}: no summary"
            assert annotations.get("description", "").strip(), f"{name}: no description"
            assert all(isinstance(value, str) for value in {**rule["labels"], **annotations}.values())
            _balanced(rule["expr"], name)
    assert len(alerts) == len(set(alerts)), f"duplicate alert names: {sorted(alerts)}"


def test_rules_cover_what_an_operator_must_hear_about():
    used = set()
    for rule in all_alert_rules():
        used |= promql_names(rule["expr"])[0]
    expected = {
        "probewatch_accounts_flagged",  # flag spikes
        "probewatch_queue_depth",  # queue saturation
        "probewatch_unobserved_items_total",  # fail-open
        "probewatch_fallback_verdicts_total",  # journal failure, not ready
        "probewatch_snapshots_total",  # snapshot failures and staleness
        "probewatch_memory_pressure",
    }
    assert expected <= used, f"no rule uses {sorted(expected - used)}"


@pytest.mark.parametrize("rule", all_alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expr_uses_only_exposed_metrics(rule, exposition):
    assert promql_names(rule["expr"])[0], f"{rule['alert']} queries no metric"
    assert check_expr(rule["expr"], exposition) == [], rule["expr"]


def test_dashboard_loads_with_unique_ids_and_a_query_per_panel():
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"]
    assert any(item["name"] == "DS_PROMETHEUS" for item in dashboard.get("__inputs", [])), "no DS_PROMETHEUS input"
    panels = dashboard_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels:
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no target"
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: duplicate refIds"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']}: empty query"
            _balanced(target["expr"], panel["title"])
        # a constant line (vector($queue_capacity)) may sit beside the data, not replace it
        assert any(promql_names(target["expr"])[0] for target in panel["targets"]), f"{panel['title']}: no metric"
    assert "worker" in dashboard["description"].lower()  # it says why there are no worker panels


@pytest.mark.parametrize(("title", "expr"), dashboard_targets(), ids=[title for title, _ in dashboard_targets()])
def test_dashboard_queries_use_only_exposed_metrics(title, expr, exposition):
    assert check_expr(expr, exposition) == [], f"{title}: {expr}"


def test_the_check_catches_typos(exposition):
    """The name checks can fail: a misspelt metric, a counter without _total, a label it lacks."""
    assert check_expr("sum(rate(probewatch_verdicts_total[5m]))", exposition) == []
    assert check_expr("sum(rate(probewatch_verdict_total[5m]))", exposition) == [
        "unknown metric 'probewatch_verdict_total'"
    ]
    assert check_expr("rate(probewatch_verdicts[5m])", exposition) == ["unknown metric 'probewatch_verdicts'"]
    assert check_expr('probewatch_verdicts_total{cause="x"}', exposition) == [
        "probewatch_verdicts_total has no label 'cause'"
    ]
    assert check_expr("sum by (reason) (probewatch_queue_depth)", exposition) == ["no metric here has label 'reason'"]
    assert check_expr("probewatc_queue_depth > 3", exposition) == ["unknown metric 'probewatc_queue_depth'"]


def _balanced(expr: str, where: str) -> None:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', re.sub(r"\$\{\w+\}", "", expr)):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            assert depth[closing[char]] >= 0, f"{where}: unbalanced {char!r} in {expr!r}"
    assert all(count == 0 for count in depth.values()), f"{where}: unbalanced brackets in {expr!r}"


def test_readiness_and_queue_capacity_are_exported_for_the_alert_rules():
    from probewatch.serve.metrics import ServerMetrics

    state = {"ready": False}
    metrics = ServerMetrics(lambda: None, lambda: 3, read_ready=lambda: state["ready"], queue_capacity=4096)
    assert b"probewatch_ready 0.0" in metrics.render()
    state["ready"] = True
    text = metrics.render()
    assert b"probewatch_ready 1.0" in text and b"probewatch_queue_capacity 4096.0" in text
    assert b"probewatch_queue_depth 3.0" in text
