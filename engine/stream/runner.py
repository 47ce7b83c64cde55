"""``probewatch worker``: the command line around :class:`~probewatch.stream.worker.Worker`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from ..cli.args import at_least
from ..errors import ConfigError, ProbewatchError
from ..serve.logs import make_formatter
from ..serve.runner import _alert_sinks, add_shared_flags
from .config import WorkerConfig, load_worker_config

# a worker keeps state per partition it owns: more than this is a cluster's own tooling's job
MAX_CREATED_PARTITIONS = 1024


def main_worker(argv: Sequence[str] | None = None) -> int:
    """``probewatch worker [--config FILE] [--bootstrap-servers B] [--group-id G] [--state-url U] ...``;
    exit 0 after SIGTERM/SIGINT (every partition checkpointed and committed), 2 on bad settings, 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="probewatch worker", description="Run a probewatch Kafka worker (a consumer-group member; docs/kafka.md)."
    )
    add_shared_flags(parser)
    parser.add_argument("--bootstrap-servers", help="Kafka brokers, host:port[,host:port] (default 127.0.0.1:9092)")
    parser.add_argument("--group-id", help="consumer group (default probewatch)")
    parser.add_argument("--state-url", help="checkpoint store: file:///path or an fsspec URL")
    parser.add_argument("--host", help="bind address of /metrics, /healthz, /readyz (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="their port (default 8322; 0 picks a free one)")
    parser.add_argument("--alert-outbox-dir", help="local folder of the alert outboxes (default ./probewatch-alerts)")
    parser.add_argument(
        "--create-topics",
        type=at_least(1, at_most=MAX_CREATED_PARTITIONS),
        metavar="N",
        help=f"create missing topics first (N partitions, 1 to {MAX_CREATED_PARTITIONS}; verdicts compacted) - for "
        "development and first deployments",
    )
    parser.add_argument(
        "--campaign-aggregator",
        action="store_true",
        help="run the campaign aggregator instead: one campaign layer over summaries_topic (docs/kafka.md)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        alert_sinks = _alert_sinks(args.alert_sink)
        config = load_worker_config(
            args.config,
            bootstrap_servers=args.bootstrap_servers,
            group_id=args.group_id,
            state_url=args.state_url,
            host=args.host,
            port=args.port,
            engine={"device": args.device} if args.device else None,
            log_format=args.log_format,
            alert_sinks=alert_sinks,
            alert_outbox_dir=args.alert_outbox_dir,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return run_worker(config, create_topics_partitions=args.create_topics, aggregator=args.campaign_aggregator)


def run_worker(config: WorkerConfig, create_topics_partitions: int | None = None, aggregator: bool = False) -> int:
    from .metrics import serve_operations
    from .worker import Worker

    _configure_logging(config)
    log = logging.getLogger("probewatch.stream")
    log.info("starting with settings %s", config.public_dict())
    try:
        if create_topics_partitions is not None:
            from .admin import create_topics

            created = create_topics(config, create_topics_partitions)
            log.info("created topics %s", created or "none (all existed)")
        if aggregator:
            from .campaigns import CampaignAggregator

            worker: Worker = CampaignAggregator(config)
        else:
            worker = Worker(config)
    except (ProbewatchError, ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        server = serve_operations(
            worker, config.host, config.port, stale_after_s=max(60.0, config.session_timeout_ms / 500)
        )
    except OSError as exc:  # the port is taken, or the host is not this machine's
        log.error(
            "cannot start: /metrics, /healthz and /readyz cannot listen on %s:%d: %s", config.host, config.port, exc
        )
        return 2
    log.info("metrics and health on http://%s:%d", *server.server_address[:2])

    def stop(signum, _frame) -> None:
        log.info("received %s: checkpointing and leaving the group", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    except ProbewatchError as exc:
        log.error("stopped: %s", exc)
        return 1
    finally:
        server.shutdown()
    log.info("stopped cleanly")
    return 0


def _configure_logging(config: WorkerConfig) -> None:
    logger = logging.getLogger("probewatch")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(make_formatter(config.log_format))
        logger.addHandler(handler)
    logger.setLevel(config.log_level.upper())
