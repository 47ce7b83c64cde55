"""`probewatch replay` and `probewatch calibrate` on JSONL files with bad lines: each bad line is
named with what is wrong with it, and the good lines are observed as if the bad ones were absent."""

from __future__ import annotations

import json
import re

import pytest

from probewatch.cli.main import main as probewatch

GOOD = [{"account": "alice", "prompt": "How do I bake sourdough bread?"}, {"account": "bob", "prompt": "What is 2+2?"}]


def _jsonl(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _good_line(i: int) -> bytes:
    return json.dumps(GOOD[i]).encode()


def test_replay_names_each_bad_line_and_observes_the_rest(tmp_path, capsys):
    bad = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            b"\xef\xbb\xbf" + _good_line(0),  # a byte-order mark opening the file is allowed
            b"not json",
            b'{"account": "carol"}',
            b"[1, 2]",
            b"\xff\xfe{}",  # not UTF-8 (json.loads on bytes would call it UTF-16)
            b'{"account": "", "prompt": "x"}',
            _good_line(1),
        ],
    )
    out = tmp_path / "verdicts.jsonl"
    assert probewatch(["replay", str(bad), "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "line 2: skipped: expected a JSON object" in err
    assert "line 3: skipped: the object lacks 'prompt' (it has 'account')" in err
    assert "line 4: skipped: expected a JSON object" in err and "got list [1, 2]" in err
    assert "line 5: skipped" in err and "not UTF-8 text: byte 0 is b'\\xff'" in err and "utf-16" not in err.lower()
    assert "line 6: skipped: an account id must be non-empty" in err
    assert "2 accounts, 5 rows skipped" in err
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(v["line"], v["account"], v["n_queries"]) for v in verdicts] == [(1, "alice", 1), (7, "bob", 1)]
    # --strict turns skipped rows into a failing exit code
    assert probewatch(["replay", str(bad), "--device", "cpu", "--quiet", "--out", str(out), "--strict"]) == 1


def test_replay_says_skipped_lines_in_line_order_and_off_the_progress_bar(tmp_path, capsys):
    """A row the engine refuses (an empty prompt) is found when its batch is observed, a row that
    is no JSON when it is read: both are said in line order, each on a line of its own, never
    glued to the progress bar's last redraw."""
    rows = _jsonl(
        tmp_path / "order.jsonl",
        [_good_line(0), b'{"account": "dave", "prompt": "   "}', b"not json", _good_line(1), b'{"account": "erin"}'],
    )
    out = tmp_path / "verdicts.jsonl"
    assert probewatch(["replay", str(rows), "--device", "cpu", "--out", str(out)]) == 0  # the bar drawn
    err = capsys.readouterr().err
    said = re.findall(r"line (\d+): skipped", err)
    assert said == ["2", "3", "5"]
    assert len(re.findall(r"(?:^|[\r\n])line \d+: skipped", err)) == len(said)  # each starts a line
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 4]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b'{"prompt": "hi"}', "the object lacks 'account' (it has 'prompt')"),
        (b"{}", "the object lacks 'account' and 'prompt' (it has no keys)"),
        (b"\xc3(", "not UTF-8 text: byte 0"),
        # rows the engine would refuse are named by their line too, before the model loads
        (b'{"account": "carol", "prompt": "   "}', "a prompt must contain non-whitespace text"),
        (b'{"account": "carol", "prompt": "hi", "ts": "noon"}', "a timestamp must be a number of seconds"),
    ],
)
def test_calibrate_stops_at_a_bad_line_and_writes_nothing(tmp_path, capsys, line, says):
    source = _jsonl(tmp_path / "benign.jsonl", [_good_line(0), line])
    out = tmp_path / "calibration.npz"
    assert probewatch(["calibrate", str(source), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "line 2: " in err and says in err and "nothing was calibrated" in err
    assert not out.exists()


def test_a_line_nested_too_deeply_is_skipped_like_any_other_bad_line(tmp_path, capsys):
    """json's decoder recurses once per level: such a line raised RecursionError and lost the run."""
    rows = _jsonl(tmp_path / "deep.jsonl", [_good_line(0), b"[" * 5000 + b"]" * 5000, _good_line(1)])
    out = tmp_path / "verdicts.jsonl"
    assert probewatch(["replay", str(rows), "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert "line 2: skipped: expected a JSON object" in capsys.readouterr().err
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 3]


def _no_traceback(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_files_and_paths_get_one_line_and_exit_2_before_any_work(tmp_path, capsys):
    rows = _jsonl(tmp_path / "rows.jsonl", [_good_line(0), _good_line(1)])
    snapshot = tmp_path / "cut.npz"
    snapshot.write_bytes(b"PK\x03\x04" + bytes(100))  # a zip's start, then nothing
    cases = [
        (["replay", str(rows), "--load", str(snapshot)], f"probewatch replay: {snapshot} is not a readable"),
        (["replay", str(rows), "--calibration", str(snapshot)], f"probewatch replay: {snapshot} is not a readable"),
        (["replay", str(rows), "--out", str(tmp_path)], f"probewatch replay: --out {tmp_path} is a folder"),
        (["replay", str(rows), "--save", str(tmp_path / "no" / "s.npz")], "folder " + str(tmp_path / "no")),
        (["replay", str(tmp_path)], f"probewatch replay: {tmp_path} is not a file"),
        (["calibrate", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "c.npz")], "no such file"),
        (["calibrate", str(rows), "--out", str(tmp_path)], f"probewatch calibrate: --out {tmp_path} is a folder"),
        # two accounts are too few to calibrate on: the engine's own error, in one line
        (["calibrate", str(rows), "--out", str(tmp_path / "c.npz")], "calibration needs at least 30 benign accounts"),
    ]
    for argv, says in cases:
        assert probewatch([*argv, "--device", "cpu"]) == 2, argv
        captured = capsys.readouterr()
        assert says in captured.err and _no_traceback(captured.err), (argv, captured.err)
        assert captured.out == "", argv  # --save is checked first: no row was replayed for nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.npz", "rows.jsonl"]


def test_repair_state_says_a_config_file_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "sidecar.yaml"
    config.write_bytes(b"data_dir: \xff\xfe\n")
    assert probewatch(["repair-state", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "must be UTF-8 text; byte 10 is b'\\xff'" in err and _no_traceback(err)


@pytest.mark.parametrize("command", ["demo", "replay"])
@pytest.mark.parametrize("size", ["0", "-5", "many"])
def test_a_batch_size_below_one_is_a_usage_error(command, size, tmp_path, capsys):
    # demo raised "range() arg 3 must not be zero"; replay ran one row per batch
    args = [command, *([str(tmp_path / "in.jsonl")] if command == "replay" else []), "--batch-size", size]
    with pytest.raises(SystemExit) as exit_:
        probewatch(args)
    assert exit_.value.code == 2 and "--batch-size" in capsys.readouterr().err
