"""The ``probewatch`` commands: demo, replay, calibrate, serve, worker, repair-state."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from .. import __version__
from ..engine import Engine
from ..errors import BatchError, InputError, ProbewatchError
from ..io.validation import check_items
from ..types import Level
from .args import at_least
from .demo import EXTRACTING, NORMAL_ACCOUNTS, demo_traffic

TOP_ACCOUNTS = 10


def _engine(args: argparse.Namespace):
    if getattr(args, "load", None):
        return Engine.load(args.load, device=args.device)
    return Engine(device=args.device, calibration_path=getattr(args, "calibration", None))


def _risk_table(engine, accounts: list[str], out: TextIO, limit: int = TOP_ACCOUNTS) -> None:
    # ranked by "1 in N benign accounts": risk rounds to 1.0 for every clear extractor
    reports = sorted((engine.report(a) for a in accounts), key=lambda r: (-r.peak_one_in, r.account))
    out.write(f"\n{'account':<22} {'queries':>7} {'level':<6} {'peak: 1 in N benign':>20}  top reasons\n")
    out.write("-" * 110 + "\n")
    for r in reports[:limit]:
        reasons = "; ".join(f"{x.feature} {x.direction} benign (p{x.benign_percentile:.0f})" for x in r.reasons[:2])
        rarity = f"1 in {r.peak_one_in:,.0f}" if r.peak_one_in < 1e6 else f"1 in {r.peak_one_in:.1e}"
        out.write(f"{r.account[:22]:<22} {r.n_queries:>7} {r.level:<6} {rarity:>20}  {reasons or '-'}\n")


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.time()
    print(
        f"probewatch demo: {len(NORMAL_ACCOUNTS)} ordinary accounts and {len(EXTRACTING)} extracting ones, "
        "interleaved in time order",
        file=sys.stderr,
    )
    engine = _engine(args)
    events = demo_traffic()
    print(f"loading the embedding model on {engine.config.device} ...", file=sys.stderr)
    _ = engine.embedder
    first_flag: dict[str, int] = {}
    with tqdm(total=len(events), desc="observing", unit="prompt", file=sys.stderr, disable=args.quiet) as bar:
        for start in range(0, len(events), args.batch_size):
            chunk = events[start : start + args.batch_size]
            verdicts = engine.observe_batch(
                [a for a, _, _ in chunk], [p for _, p, _ in chunk], [t for _, _, t in chunk]
            )
            for v in verdicts:
                if v.flagged and v.account not in first_flag:
                    first_flag[v.account] = v.n_queries
                    bar.write(
                        f"FLAG  {v.account} after {v.n_queries} queries: " + "; ".join(str(r) for r in v.reasons[:2])
                    )
            bar.update(len(chunk))
    accounts = sorted({a for a, _, _ in events})
    _risk_table(engine, accounts, sys.stdout, limit=len(accounts))
    reports = {a: engine.report(a) for a in accounts}
    levels = {a: r.level for a, r in reports.items()}
    caught = [a for a in EXTRACTING if levels[a] is Level.FLAG]
    watched = [a for a in EXTRACTING if levels[a] is Level.WATCH]
    missed = [a for a in EXTRACTING if levels[a] is Level.OK]
    false = [a for a in accounts if a not in EXTRACTING and levels[a] is Level.FLAG]
    ordinary = len(accounts) - len(EXTRACTING)
    print(
        f"\nextracting accounts: {len(caught)}/{len(EXTRACTING)} flagged, {len(watched)} on watch, "
        f"{len(missed)} missed; ordinary accounts flagged: {len(false)}/{ordinary}; {time.time() - started:.1f}s"
    )
    # The demo fails (exit 1) when an ordinary account is flagged, no extractor is, or an
    # extractor ranks no higher than every ordinary account (peak "1 in N benign"): an analyst
    # works down that ranking, so an extractor below an ordinary user is one they would miss.
    ordinary_top = max(r.peak_one_in for a, r in reports.items() if a not in EXTRACTING)
    outranked = [a for a in EXTRACTING if reports[a].peak_one_in <= ordinary_top]
    if outranked:
        print(f"ranked no higher than an ordinary account: {', '.join(outranked)}")
    return 1 if false or not caught or outranked else 0


def _read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row or the exception saying why not) per non-blank line. Lines are
    decoded as UTF-8, as JSON Lines are (json.loads on bytes would guess UTF-16 from a stray
    0xff 0xfe); a byte-order mark opening the file is allowed."""
    with contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 1]
                yield lineno, ValueError(f"the line is not UTF-8 text: byte {exc.start} is {bad!r} ({exc.reason})")
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as exc:
                yield lineno, exc
            except RecursionError:  # json's decoder recurses once per nesting level
                yield lineno, ValueError("the line nests JSON arrays or objects too deeply to read")


def _row_problem(row: Any) -> str | None:
    """Why a parsed JSONL row is not an {account, prompt, ts?} object, or None when it is."""
    if isinstance(row, Exception):
        return f'expected a JSON object {{"account", "prompt", "ts"?}}; {row}'
    if not isinstance(row, dict):
        return f'expected a JSON object {{"account", "prompt", "ts"?}}; got {type(row).__name__} {str(row)[:80]}'
    missing = [key for key in ("account", "prompt") if key not in row]
    if missing:
        has = ", ".join(repr(k) for k in list(row)[:5]) or "no keys"
        return f"the object lacks {' and '.join(repr(k) for k in missing)} (it has {has})"
    return None


def _replay_batch(engine, batch: list[tuple[int, str, Any, Any, str | None]], out: TextIO, seen: set[str], say) -> int:
    """Observe the good rows of one batch of JSONL rows (those without a problem), write a
    verdict line per row observed and ``say`` why each other row was skipped, all in line order;
    returns rows skipped."""
    good = [b for b in batch if b[4] is None]
    errors: dict[int, Exception] = {}
    verdicts: list[Any] = []
    if good:
        try:
            verdicts = engine.observe_batch([b[1] for b in good], [b[2] for b in good], [b[3] for b in good])
        except BatchError as exc:
            verdicts, errors = exc.verdicts, exc.errors
        except InputError as exc:  # e.g. a timestamp list the engine rejects whole: report each row
            verdicts, errors = [None] * len(good), dict.fromkeys(range(len(good)), exc)
    skipped = 0
    i = 0  # the next good row's place among the good rows
    for lineno, account, _, _, problem in batch:
        if problem is None:
            problem = errors.get(i)
            if problem is None:
                seen.add(account)
                out.write(json.dumps({"line": lineno, **verdicts[i].to_dict()}) + "\n")
            i += 1
        if problem is not None:
            say(f"line {lineno}: skipped: {problem}")
            skipped += 1
    return skipped


def _count_rows(path: str) -> int | None:
    if path == "-":
        return None
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _output_problem(path: str | None, flag: str) -> str | None:
    """Why ``path`` cannot be written (checked before any work, so none is thrown away), or None."""
    if path is None:
        return None
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        return f"{flag} {path} is a folder; give a file path"
    if not folder.is_dir():
        return f"{flag} {path}: folder {folder} does not exist"
    return None


def _input_problem(path: str) -> str | None:
    if path != "-" and not Path(path).is_file():
        return f"no such file {path}" if not Path(path).exists() else f"{path} is not a file"
    return None


def cmd_replay(args: argparse.Namespace) -> int:
    for problem in (
        _input_problem(args.file),
        _output_problem(args.out, "--out"),
        _output_problem(args.save, "--save"),
    ):
        if problem is not None:
            print(f"probewatch replay: {problem}", file=sys.stderr)
            return 2
    engine = _engine(args)
    bad = 0
    seen: set[str] = set()
    batch: list[tuple[int, str, Any, Any, str | None]] = []
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.out, "w", encoding="utf-8")) if args.out else sys.stdout
        bar = stack.enter_context(
            tqdm(total=_count_rows(args.file), desc="replaying", unit="row", file=sys.stderr, disable=args.quiet)
        )

        def say(message: str) -> None:  # above the progress bar, not inside it
            tqdm.write(message, file=sys.stderr)

        good = 0  # rows of the batch to observe
        for lineno, row in _read_jsonl(args.file):
            bar.update(1)
            problem = _row_problem(row)
            if problem is None:
                batch.append((lineno, row["account"], row["prompt"], row.get("ts"), None))
                good += 1
            else:  # said with its batch, so every line is reported in order
                batch.append((lineno, "", None, None, problem))
            if good >= args.batch_size or len(batch) >= 4 * args.batch_size:  # bad rows held: bounded
                bad += _replay_batch(engine, batch, out, seen, say)
                batch.clear()
                good = 0
        if batch:
            bad += _replay_batch(engine, batch, out, seen, say)
    if seen:
        _risk_table(engine, sorted(seen), sys.stderr)
    if args.save:
        engine.save(args.save)
        print(f"state saved to {args.save}", file=sys.stderr)
    print(f"{len(seen)} accounts, {bad} rows skipped", file=sys.stderr)
    return 1 if bad and args.strict else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    for problem in (_input_problem(args.file), _output_problem(args.out, "--out")):
        if problem is not None:
            print(f"probewatch calibrate: {problem}", file=sys.stderr)
            return 2
    accounts, prompts, stamps, linenos = [], [], [], []
    for lineno, row in _read_jsonl(args.file):
        problem = _row_problem(row)
        if problem is not None:
            print(f"probewatch calibrate: line {lineno}: {problem}; nothing was calibrated", file=sys.stderr)
            return 2
        accounts.append(row["account"])
        prompts.append(row["prompt"])
        stamps.append(row.get("ts"))
        linenos.append(lineno)
    engine = Engine(device=args.device)
    _, _, _, errors = check_items(accounts, stamps, prompts, engine.config.max_prompt_chars)
    if errors:  # said by line, before the model loads
        first = min(errors)
        print(
            f"probewatch calibrate: line {linenos[first]}: {errors[first]}; nothing was calibrated "
            f"({len(errors)} invalid row{'s' if len(errors) != 1 else ''} in all)",
            file=sys.stderr,
        )
        return 2
    engine.calibrate(accounts, prompts, stamps, source=f"probewatch calibrate {args.file}")
    engine.save_calibration(args.out)
    print(
        f"calibration from {len(set(accounts))} benign accounts written to {args.out}; "
        f"flag threshold {engine.detector.flag_threshold:.3f}"
    )
    return 0


def cmd_serve(rest: list[str]) -> int:
    try:  # the sidecar's packages are an extra (uvicorn is otherwise imported only when it runs)
        import uvicorn  # noqa: F401

        from ..serve import main_serve
    except ImportError as exc:
        print(f"probewatch serve needs the serve extra: pip install 'probewatch[serve]' ({exc})", file=sys.stderr)
        return 2
    return int(main_serve(rest) or 0)


def cmd_worker(rest: list[str]) -> int:
    try:  # the worker's packages are an extra (confluent_kafka is otherwise imported only when it runs)
        import confluent_kafka  # noqa: F401

        from ..stream.runner import main_worker
    except ImportError as exc:
        print(f"probewatch worker needs the kafka extra: pip install 'probewatch[kafka]' ({exc})", file=sys.stderr)
        return 2
    return int(main_worker(rest) or 0)


def cmd_repair_state(args: argparse.Namespace) -> int:
    """Exit 0: nothing to drop, or dropped (--yes); 1: a dry run found something to drop; 2: bad input."""
    try:  # the sidecar's settings need the serve extra
        from ..errors import ConfigError, ProbewatchError
        from ..serve.config import load_config
        from ..serve.datadir_lock import DataDirLock, in_use_message
        from ..serve.repair import apply_repair, plan_repair
    except ImportError as exc:
        print(
            f"probewatch repair-state needs the serve extra: pip install 'probewatch[serve]' ({exc})", file=sys.stderr
        )
        return 2
    lock = None
    try:
        try:
            config = load_config(args.config, data_dir=args.data_dir)
            if args.yes and config.data_path.is_dir():  # a sidecar running there would write past the repair
                lock = DataDirLock(config.data_path)
                holder = lock.acquire()
                if holder is not None:
                    print(f"probewatch repair-state: {in_use_message(config.data_path, holder)}", file=sys.stderr)
                    return 2
            plan = plan_repair(config.data_path)
        except (ConfigError, ProbewatchError, FileNotFoundError, PermissionError) as exc:
            print(f"probewatch repair-state: {exc}", file=sys.stderr)
            return 2
        print(plan.describe())
        if plan.clean:
            return 0
        if not args.yes:
            print("dry run: nothing was changed; stop the sidecar and run again with --yes to drop the above")
            return 1
        apply_repair(plan)
        print(f"dropped; recorded in {config.data_path / 'repair.json'}; the sidecar can start")
        return 0
    finally:
        if lock is not None:
            lock.release()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probewatch", description="Find the accounts that are extracting your LLM.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="run a small built-in scenario (ordinary and extracting accounts)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--batch-size", type=at_least(1), default=16)
    demo.add_argument("--quiet", action="store_true")

    replay = sub.add_parser(
        "replay", help="stream a JSONL file of {account, prompt, ts?} rows; print verdicts as JSONL"
    )
    replay.add_argument("file", help="JSONL file, or - for standard input")
    replay.add_argument("--device", default="auto")
    replay.add_argument("--batch-size", type=at_least(1), default=32)
    replay.add_argument("--out", help="write verdict JSONL here instead of standard output")
    replay.add_argument("--load", help="start from this engine snapshot")
    replay.add_argument("--save", help="write the engine snapshot here at the end")
    replay.add_argument("--calibration", help="calibration file (default: the shipped one)")
    replay.add_argument("--strict", action="store_true", help="exit 1 when any row was skipped")
    replay.add_argument("--quiet", action="store_true")

    cal = sub.add_parser("calibrate", help="fit a calibration on known-benign JSONL traffic")
    cal.add_argument("file")
    cal.add_argument("--out", required=True)
    cal.add_argument("--device", default="auto")

    sub.add_parser("serve", help="run the HTTP sidecar (see docs/sidecar.md)", add_help=False)
    sub.add_parser("worker", help="run a Kafka consumer-group worker (see docs/kafka.md)", add_help=False)

    repair = sub.add_parser(
        "repair-state",
        help="report what of the sidecar's data directory cannot be restored; with --yes, drop it so it can start",
        description="Report exactly what the sidecar cannot restore from its data directory (unreadable snapshots, "
        "damaged journal lines, missing seqs and the records after them, torn tails); with --yes, drop it so the "
        "sidecar can start. Stop the sidecar first. Exit 0: nothing to drop or dropped; 1: a dry run found "
        "something; 2: bad input.",
    )
    repair.add_argument("--config", help="the sidecar's YAML settings file (for data_dir)")
    repair.add_argument("--data-dir", help="the sidecar's journal and snapshots folder (default: as probewatch serve)")
    repair.add_argument("--yes", action="store_true", help="drop what is reported (default: a dry run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "serve":  # the sidecar parses its own flags
        return cmd_serve(argv[1:])
    if argv and argv[0] == "worker":
        return cmd_worker(argv[1:])
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    commands = {"demo": cmd_demo, "replay": cmd_replay, "calibrate": cmd_calibrate}
    if args.command in commands:
        try:
            return commands[args.command](args)
        except (ProbewatchError, OSError) as exc:  # a bad file, a full disk: one line, not a traceback
            print(f"probewatch {args.command}: {exc}", file=sys.stderr)
            return 2
    if args.command == "repair-state":
        return cmd_repair_state(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
