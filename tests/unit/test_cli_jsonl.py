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
    ],
)
def test_calibrate_stops_at_a_bad_line_and_writes_nothing(tmp_path, capsys, line, says):
    source = _jsonl(tmp_path / "benign.jsonl", [_good_line(0), line])
    out = tmp_path / "calibration.npz"
    assert probewatch(["calibrate", str(source), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "line 2: " in err and says in err and "nothing was calibrated" in err
    assert not out.exists()
