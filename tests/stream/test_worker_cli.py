"""``probewatch worker``'s start-up mistakes: one line and exit 2, never a traceback."""

from __future__ import annotations

import logging
import socket

import pytest

from probewatch.stream import WorkerConfig
from probewatch.stream.admin import create_topics
from probewatch.stream.runner import MAX_CREATED_PARTITIONS, main_worker, run_worker
from tests.support import free_port


@pytest.mark.parametrize("count", ["0", "-1", str(MAX_CREATED_PARTITIONS + 1), "100000", "many"])
def test_create_topics_takes_a_bounded_partition_count(count, capsys):
    # 0 used to mean "create nothing" silently; 100000 grew a worker past 17 GB
    with pytest.raises(SystemExit) as exit_:
        main_worker(["--create-topics", count])
    assert exit_.value.code == 2
    assert "--create-topics" in capsys.readouterr().err


def test_creating_topics_without_a_broker_says_which_brokers(tmp_path):
    nobody = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=f"no Kafka broker at {nobody}"):
        create_topics(WorkerConfig(bootstrap_servers=nobody), 1, timeout=1)


def test_a_taken_port_is_one_line_and_exit_2(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = WorkerConfig(
            bootstrap_servers=f"127.0.0.1:{free_port()}", port=port, state_url=(tmp_path / "state").as_uri()
        )
        with caplog.at_level(logging.ERROR, logger="probewatch.stream"):
            assert run_worker(config) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
