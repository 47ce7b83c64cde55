"""Sidecar settings: precedence, environment text, the YAML layout, and the errors for bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from probewatch.config import EngineConfig
from probewatch.errors import ConfigError
from probewatch.serve.config import ServerConfig, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKEN = "a-secret-token-0123456789"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment():
    config = load_config(env={})
    assert config == ServerConfig()
    assert config.port == 8321 and config.failure_policy == "open" and config.api_token is None
    # the sidecar learns the provider's normal after its warm-up; a library Engine() does not
    assert config.engine == EngineConfig(device="auto", population_update_every=10_000)
    assert EngineConfig().population_update_every == 0
    assert config.data_path == Path("./probewatch-data")


def test_learning_stays_on_when_other_engine_settings_are_given_and_can_be_turned_off(tmp_path):
    path = write(tmp_path, "engine:\n  device: cpu\n")
    assert load_config(path, env={}).engine.population_update_every == 10_000
    off = load_config(path, env={"PROBEWATCH_ENGINE_POPULATION_UPDATE_EVERY": "0"})
    assert off.engine.population_update_every == 0
    with pytest.raises(ConfigError, match="population_min_accounts"):
        load_config(env={"PROBEWATCH_ENGINE_POPULATION_MIN_ACCOUNTS": "0"})


def test_precedence_defaults_file_environment_overrides(tmp_path):
    path = write(tmp_path, "port: 9000\nmax_batch_size: 8\nhost: 0.0.0.0\nengine:\n  device: cpu\n  history_cap: 500\n")
    env = {"PROBEWATCH_PORT": "9100", "PROBEWATCH_ENGINE_HISTORY_CAP": "600", "PROBEWATCH_ENGINE_WINDOW": "64"}
    config = load_config(path, env=env, port=9200, host=None, engine={"window": 32})
    assert config.port == 9200  # keyword override beats the environment, which beats the file
    assert config.host == "0.0.0.0"  # None means "not given": the file's value stays
    assert config.max_batch_size == 8 and config.queue_capacity == 4096  # file, default
    assert (config.engine.device, config.engine.history_cap, config.engine.window) == ("cpu", 600, 32)


def test_environment_text_is_converted_to_each_setting_type():
    env = {
        "PROBEWATCH_SNAPSHOT_EVERY_OBSERVATIONS": "50_000",
        "PROBEWATCH_MAX_WAIT_MS": "2.5",
        "PROBEWATCH_SNAPSHOT_AFTER_FORGET": "off",
        "PROBEWATCH_FAILURE_POLICY": "closed",
        "probewatch_log_level": "debug",  # names match in any case
        "PROBEWATCH_API_TOKEN": TOKEN,
        "PROBEWATCH_CALIBRATION_PATH": "none",
        "PROBEWATCH_ENGINE_TARGET_FPR": "0.01",
        "PROBEWATCH_ENGINE_WATCH_FPR": "0.05",
        "PROBEWATCH_ENGINE_MODEL": "",
        "PROBEWATCH_ACCOUNT_HEADER": "x-user",  # the ASGI middleware's: not a sidecar setting, ignored here
    }
    config = load_config(env=env)
    assert config.snapshot_every_observations == 50_000 and config.max_wait_ms == 2.5
    assert config.snapshot_after_forget is False and config.failure_policy == "closed"
    assert config.log_level == "debug" and config.api_token == TOKEN and config.calibration_path is None
    assert (config.engine.target_fpr, config.engine.watch_fpr, config.engine.model) == (0.01, 0.05, None)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PROBEWATCH_PORT": "eighty"}, ["setting port", "valid integer", "got 'eighty'"]),
        ({"PROBEWATCH_PORT": "70000"}, ["setting port", "less than or equal to 65535", "got '70000'"]),
        ({"PROBEWATCH_FAILURE_POLICY": "ajar"}, ["failure_policy", "'open' or 'closed'", "got 'ajar'"]),
        ({"PROBEWATCH_JOURNAL_FSYNC": "sometimes"}, ["journal_fsync", "'always'", "got 'sometimes'"]),
        ({"PROBEWATCH_QUEUE_CAPACITY": "10"}, ["queue_capacity must be >= max_items_per_request (256); got 10"]),
        ({"PROBEWATCH_PAGE_SIZE_DEFAULT": "5000"}, ["page_size_default must be <= page_size_max (1000); got 5000"]),
        ({"PROBEWATCH_MAX_PROMPT_CHARS": "300000"}, ["max_prompt_chars must be <= engine.max_prompt_chars"]),
        ({"PROBEWATCH_ENGINE_EMBED_BATCH_SIZE": "many"}, ["setting engine.embed_batch_size", "got 'many'"]),
        ({"PROBEWATCH_ENGINE_HISTORY_CAP": "3"}, ["engine settings", "history_cap must be >= 16; got 3"]),
        ({"PROBEWATCH_FAIL_MODE": "closed"}, ["PROBEWATCH_FAIL_MODE", "renamed PROBEWATCH_FAILURE_POLICY"]),
    ],
)
def test_bad_values_name_the_setting_what_it_expects_and_what_came(env, words):
    with pytest.raises(ConfigError) as error:
        load_config(env=env)
    for word in words:
        assert word in str(error.value)


def test_the_token_is_never_shown():
    with pytest.raises(ConfigError, match="at least 16 characters") as error:
        load_config(env={"PROBEWATCH_API_TOKEN": "short-secret"})
    assert "short-secret" not in str(error.value) and "<hidden>" in str(error.value)
    config = ServerConfig(api_token=TOKEN)
    assert config.public_dict()["api_token"] == "<set>" and TOKEN not in str(config.public_dict())
    assert ServerConfig().api_token is None  # unset: no token (the service warns loudly at start)


@pytest.mark.parametrize("value", ["", "   ", "none", "NULL"])
def test_a_token_set_but_empty_refuses_to_start(value):
    # an empty secret is a deployment mistake, never a way to turn authentication off
    with pytest.raises(ConfigError, match="api_token is set but empty"):
        load_config(env={"PROBEWATCH_API_TOKEN": value})
    with pytest.raises(ConfigError, match="api_token is set but empty"):
        ServerConfig(api_token=value)


def test_the_campaign_salt_is_never_shown():
    salt = "5a17" * 8  # the key of the metadata hashes: whoever holds it can test guesses of an IP
    config = load_config(env={"PROBEWATCH_ENGINE_CAMPAIGN_SALT": salt})
    assert config.engine.campaign_salt == salt
    assert config.public_dict()["engine"]["campaign_salt"] == "<set>" and salt not in str(config.public_dict())
    assert load_config(env={}).public_dict()["engine"]["campaign_salt"] is None
    with pytest.raises(ConfigError) as error:
        load_config(env={"PROBEWATCH_ENGINE_CAMPAIGN_SALT": "not-hex-" + salt})
    assert salt not in str(error.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("prot: 80\n", ["unknown settings ['prot']", "valid ones are", "'port'", "and 'engine'"]),
        ("fail_mode: closed\n", ["sets fail_mode", "renamed failure_policy"]),
        ("engine: cpu\n", ["'engine' must be a mapping"]),
        ("- port\n", ["must hold a mapping of settings; got list"]),
        ("port: [1\n", ["not valid YAML"]),
        ("engine:\n  devize: cpu\n", ["unknown settings ['engine.devize']", "'engine.device'"]),
    ],
)
def test_bad_yaml_files(tmp_path, text, words):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})
    for word in words:
        assert word in str(error.value)


def test_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.yaml", env={})


def test_the_example_file_loads():
    config = load_config(EXAMPLES / "sidecar.yaml", env={})
    assert config.failure_policy == "open" and config.engine.history_cap == 10_000


def test_config_is_immutable_and_replace_checks_its_changes():
    config = ServerConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1
    changed = config.replace(port=9000, engine={"device": "cpu"})
    assert (changed.port, changed.engine.device, config.port) == (9000, "cpu", 8321)
    assert changed.replace(max_batch_size=2).engine == changed.engine
    with pytest.raises(ConfigError, match="max_batch_size"):
        config.replace(max_batch_size=0)
    with pytest.raises(ConfigError, match=r"unknown settings \['fail_mode'\]"):
        config.replace(fail_mode="closed")


def test_the_runner_caps_concurrent_connections(monkeypatch, tmp_path):
    import uvicorn

    from probewatch.serve import runner

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    runner.run(ServerConfig(data_dir=str(tmp_path), max_connections=64, api_token=TOKEN))
    # requests past 64 get the Gatekeeper's JSON 503; uvicorn's plain-text cap sits above it
    assert seen["limit_concurrency"] == 128
    with pytest.raises(ConfigError, match="max_connections"):
        ServerConfig(max_connections=0)


def test_no_token_refuses_to_start_unless_no_auth_on_loopback(monkeypatch, tmp_path, capsys):
    import uvicorn

    from probewatch.serve import create_app, runner

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs["host"]))
    with pytest.raises(ConfigError, match=r"set PROBEWATCH_API_TOKEN .* or pass --no-auth"):
        runner.run(ServerConfig(data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="no API token"):
        create_app(ServerConfig(data_dir=str(tmp_path)))
    assert started == []
    # the command line says the same, before any model is loaded
    monkeypatch.setattr(os, "environ", {})
    with pytest.raises(SystemExit) as usage:
        runner.main_serve(["--data-dir", str(tmp_path)])
    assert usage.value.code == 2 and "PROBEWATCH_API_TOKEN" in capsys.readouterr().err
    assert runner.main_serve(["--data-dir", str(tmp_path), "--no-auth"]) == 0
    assert runner.main_serve(["--data-dir", str(tmp_path), "--no-auth", "--host", "::1"]) == 0
    assert started == ["127.0.0.1", "::1"]
    assert load_config(env={"PROBEWATCH_NO_AUTH": "true", "PROBEWATCH_HOST": "localhost"}).no_auth
    for host in ("0.0.0.0", "192.168.1.7", "example.internal"):
        with pytest.raises(ConfigError, match=f"loopback host .* got host '{host}'"):
            load_config(env={"PROBEWATCH_NO_AUTH": "1", "PROBEWATCH_HOST": host})
    with pytest.raises(SystemExit):
        runner.main_serve(["--no-auth", "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="no_auth is set together with api_token"):
        ServerConfig(no_auth=True, api_token=TOKEN)


def test_rate_limit_settings():
    config = load_config(
        env={"PROBEWATCH_RATE_LIMIT_ITEMS_PER_S": "200", "PROBEWATCH_GUARDRAIL_RATE_LIMIT_PER_S": "50.5"}
    )
    assert (config.rate_limit_items_per_s, config.rate_limit_burst) == (200.0, 1024)
    assert (config.guardrail_rate_limit_per_s, config.guardrail_rate_limit_burst) == (50.5, 64)
    assert ServerConfig().rate_limit_items_per_s == ServerConfig().guardrail_rate_limit_per_s == 0  # off by default
    with pytest.raises(
        ConfigError,
        match=r"rate_limit_burst must be >= max_items_per_request \(256\) so a full request can pass; got 10",
    ):
        ServerConfig(rate_limit_items_per_s=5, rate_limit_burst=10)
    with pytest.raises(ConfigError, match="rate_limit_items_per_s"):
        load_config(env={"PROBEWATCH_RATE_LIMIT_ITEMS_PER_S": "-1"})
    with pytest.raises(ConfigError, match="rate_limit_client_header"):
        ServerConfig(rate_limit_client_header="x client")


def test_token_buckets_refill_at_their_rate_per_client():
    from probewatch.serve.ratelimit import TokenBuckets

    buckets = TokenBuckets(rate=10.0, burst=20, max_clients=2)
    assert buckets.take("a", 20, now=0.0) == 0.0
    assert buckets.take("a", 5, now=0.0) == pytest.approx(0.5)  # refused: nothing taken
    assert buckets.take("a", 5, now=0.5) == 0.0  # 5 tokens came back in 0.5 s
    assert buckets.take("b", 20, now=0.5) == 0.0  # its own bucket
    assert buckets.take("c", 1, now=0.5) == 0.0  # a third client drops the least recent ("a")
    assert buckets.take("a", 20, now=0.5) == 0.0  # so "a" starts full again
    assert TokenBuckets(rate=0, burst=1).take("a", 10**6) == 0.0  # rate 0: no limit


def test_a_data_dir_that_cannot_be_made_is_one_line_and_exit_2(tmp_path):
    """A file where the data_dir (or its journal folder) should be was a traceback and exit 1."""
    import subprocess
    import sys

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file in the way\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
    env["PROBEWATCH_API_TOKEN"] = "0123456789abcdef0123"
    done = subprocess.run(
        [sys.executable, "-m", "probewatch", "serve", "--data-dir", str(blocked), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot start: data_dir {blocked}" in done.stderr and "Traceback" not in done.stderr


def test_the_guardrail_context_settings_reach_the_routes_memory(tmp_path):
    from probewatch.serve.app import create_app

    base = {"data_dir": str(tmp_path), "api_token": "a-secret-token-0123456789"}
    app = create_app(
        ServerConfig(
            **base,
            guardrail_context_texts_per_request=5,
            guardrail_context_answered_turns=3,
            guardrail_context_instructions_every=7,
        )
    )
    sent = app.app.state.sent_texts  # the FastAPI app inside the gatekeeper
    assert (sent.per_request, sent.few_shot_turns, sent.instructions_every) == (5, 3, 7)
    assert create_app(ServerConfig(**base, guardrail_observe_context=False)).app.state.sent_texts is None
    with pytest.raises(ConfigError, match="guardrail_context_instructions_every"):
        ServerConfig(**base, guardrail_context_instructions_every=0)
