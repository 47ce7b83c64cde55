"""Starting the sidecar: ``run(config)`` for code, ``main_serve(argv)`` for the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from ..errors import ConfigError
from .config import ServerConfig, load_config, require_auth_choice
from .logs import RequestIdFilter, configure_account_logging, make_formatter


def run(config: ServerConfig | None = None) -> None:
    """Serve until SIGINT/SIGTERM: uvicorn stops accepting, in-flight requests finish (up to
    ``shutdown_drain_s``), then the service drains its queue and writes a final snapshot."""
    import uvicorn  # the serve extra; imported here so the command line can print its help without it

    from .app import create_app

    config = config or load_config()
    require_auth_choice(config)  # before the model loads: a missing token is told at once
    _configure_logging(config)
    logging.getLogger("probewatch.serve").info("starting with settings %s", config.public_dict())
    try:
        app = create_app(config)
    except OSError as exc:  # the data_dir's folders cannot be made (a file in the way, no permission)
        logging.getLogger("probewatch.serve").error("cannot start: data_dir %s: %s", config.data_path, exc)
        raise SystemExit(2) from None
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=max(1, int(config.shutdown_drain_s)),
        access_log=False,
        # json: uvicorn's own records go through the probewatch handler (see _configure_logging)
        log_config=None if config.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        server_header=False,
        lifespan="on",
        # Requests past max_connections get the Gatekeeper's JSON 503 before any work: the queue's
        # 429s and deadlines hold only while the event loop is not drowned in requests. Open
        # connections past twice that get uvicorn's own plain-text 503 (idle keep-alives count).
        limit_concurrency=2 * config.max_connections,
    )


def main_serve(argv: Sequence[str] | None = None) -> int:
    """``probewatch serve [--config FILE] [--host H] [--port P] [--data-dir D] [--device DEV] [--no-auth]
    [--alert-sink JSON ...] [--kafka [--bootstrap-servers B]]``."""
    parser = argparse.ArgumentParser(prog="probewatch serve", description="Run the probewatch HTTP sidecar.")
    add_shared_flags(parser)
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8321)")
    parser.add_argument("--data-dir", help="journal and snapshots folder (default ./probewatch-data)")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="serve without a token (loopback hosts only, for development); otherwise PROBEWATCH_API_TOKEN is required",
    )
    parser.add_argument(
        "--kafka",
        action="store_true",
        default=None,
        help="Kafka mode: publish observations to Kafka workers and answer from their verdicts (docs/kafka.md)",
    )
    parser.add_argument("--bootstrap-servers", help="Kafka mode: the brokers, host:port[,host:port]")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    engine = {"device": args.device} if args.device else None
    try:
        alert_sinks = _alert_sinks(args.alert_sink)
        config = load_config(
            args.config,
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            engine=engine,
            no_auth=args.no_auth,
            log_format=args.log_format,
            alert_sinks=alert_sinks,
            kafka_mode=args.kafka,
            bootstrap_servers=args.bootstrap_servers,
        )
        require_auth_choice(config)
    except ConfigError as exc:
        parser.error(str(exc))  # the message says which setting and why; a traceback would bury it
    run(config)
    return 0


def add_shared_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``probewatch serve`` and ``probewatch worker`` share: settings file, device,
    log format and alert sinks (read back with :func:`_alert_sinks`)."""
    parser.add_argument("--config", help="YAML settings file (PROBEWATCH_* environment variables override it)")
    parser.add_argument("--device", help="engine device: auto, cpu or cuda[:N]")
    parser.add_argument("--log-format", choices=("text", "json"), help="log lines: text (default) or json")
    parser.add_argument(
        "--alert-sink",
        action="append",
        metavar="JSON",
        help="one alert sink as a JSON object with the keys of an alert_sinks item (docs/sidecar.md, Alerts), e.g. "
        '{"name": "bus", "kind": "kafka", "bootstrap_servers": "kafka:9092", "topic": "alerts"}; repeat for more; '
        "replaces alert_sinks from the file and the environment",
    )


def _alert_sinks(given: Sequence[str] | None) -> list[dict] | None:
    """The ``--alert-sink`` values as sink mappings (None when the flag is not given)."""
    if not given:
        return None
    sinks = []
    for n, text in enumerate(given, 1):
        try:
            sink = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--alert-sink #{n} must be one sink as a JSON object; it is not JSON ({exc})") from None
        if not isinstance(sink, dict):
            raise ConfigError(
                f"--alert-sink #{n} must be one sink as a JSON object (repeat the flag for more); got a JSON "
                f"{type(sink).__name__}"
            )
        sinks.append(sink)
    return sinks


def _configure_logging(config: ServerConfig) -> None:
    configure_account_logging(config.log_account_ids, config.log_hash_key)
    logger = logging.getLogger("probewatch")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.probewatch_owned = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    for handler in logger.handlers:  # ours only: an embedder's handlers keep their formatters
        if getattr(handler, "probewatch_owned", False):
            handler.setFormatter(make_formatter(config.log_format))
    logger.setLevel(config.log_level.upper())
    server_logger = logging.getLogger("uvicorn")
    if config.log_format == "json" and not server_logger.handlers:
        server_logger.handlers = list(logger.handlers)


if __name__ == "__main__":
    sys.exit(main_serve())
