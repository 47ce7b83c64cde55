"""docs/kafka.md and docs/kafka/compose.yaml agree with the code: every setting and metric is documented,
and the compose file's settings load."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from probewatch.stream.config import WORKER_SETTINGS, load_worker_config
from probewatch.stream.metrics import WorkerMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_and_metric_is_in_the_guide():
    guide = (DOCS / "kafka.md").read_text(encoding="utf-8")
    missing = [name for name in WORKER_SETTINGS if f"`{name}`" not in guide]
    assert not missing, f"settings missing from docs/kafka.md: {missing}"
    # prometheus_client adds a <name>_created family per counter and histogram: the name is enough
    types = re.findall(r"^# TYPE (\S+) ", WorkerMetrics().render().decode(), flags=re.M)
    exported = {name for name in types if not name.endswith("_created")}
    assert len(exported) >= 12
    undocumented = [m for m in sorted(exported) if f"`{m}`" not in guide and f"`{m}_total`" not in guide]
    assert not undocumented, f"metrics missing from docs/kafka.md: {undocumented}"
    assert "SIZING_TABLE" not in guide, "the sizing table is filled in"


def test_the_compose_file_runs_workers_with_settings_that_load():
    compose = yaml.safe_load((DOCS / "kafka" / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"kafka", "topics", "worker", "campaign-aggregator"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "--campaign-aggregator" in services["campaign-aggregator"]["command"]
    env = {k: str(v) for k, v in services["worker"]["environment"].items()}
    env["PROBEWATCH_ENGINE_CAMPAIGN_SALT"] = "ab" * 16  # compose fills it from the operator's environment
    config = load_worker_config(env=env)
    assert config.bootstrap_servers == "kafka:9092" and config.summaries_topic and config.state_url == "file:///state"


def test_the_compose_files_sidecars_run_in_kafka_mode_with_settings_that_load():
    from probewatch.serve.config import load_config

    services = yaml.safe_load((DOCS / "kafka" / "compose.yaml").read_text(encoding="utf-8"))["services"]
    sidecar = services["sidecar"]
    assert sidecar["command"][:2] == ["serve", "--kafka"]
    env = {k: str(v) for k, v in sidecar["environment"].items()}
    env.update(PROBEWATCH_API_TOKEN="t" * 20, PROBEWATCH_ENGINE_CAMPAIGN_SALT="ab" * 16)  # the operator's secrets
    config = load_config(env=env, kafka_mode=True)
    assert config.bootstrap_servers == services["worker"]["environment"]["PROBEWATCH_BOOTSTRAP_SERVERS"]
    assert config.campaign_verdicts_topic == load_worker_config(env=env).campaign_verdicts_topic


def test_the_guides_document_every_kafka_mode_setting():
    from probewatch.serve.config import ServerConfig

    names = [
        n
        for n in ServerConfig.model_fields
        if n.startswith("kafka") or n.endswith("_topic") or n == "bootstrap_servers"
    ]
    assert "kafka_mode" in names and "kafka_verdict_wait_ms" in names
    for guide in ("sidecar.md", "kafka.md"):
        text = (DOCS / guide).read_text(encoding="utf-8")
        missing = [n for n in names if f"`{n}`" not in text]
        assert not missing, f"Kafka-mode settings missing from docs/{guide}: {missing}"
