"""Writes the detection benchmark's outputs from the results of ``bench.eval``:
report.md (tables and protocol), results.json (every number) and PNG plots.

Everything here reads only the results dictionary, so a report can be redrawn from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.metrics import detection_curve, roc_curve

ROC_PLOT = "roc.png"
DELAY_PLOT = "detection_delay.png"
RISK_PLOT = "risk_over_time.png"
# Plot floor for 1 - risk on a log axis (risk can be exactly 1 far in the tail).
MIN_EXCEEDANCE = 1e-6
PLOT_COLUMNS = 4


# -- formatting ----------------------------------------------------------------------------------
def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_rate(x) -> str:
    return "–" if _missing(x) else f"{x:.2f}"


def fmt_queries(x) -> str:
    return "–" if _missing(x) else f"{x:.0f}"


def _pct(key: str) -> str:
    return f"{float(key) * 100:g}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _detectors(results: dict) -> list[str]:
    return list(results["meta"]["detectors"]) if "meta" in results else list(results["detectors"])


# -- tables ------------------------------------------------------------------------------------
def main_table(results: dict) -> str:
    """Scenario x detector: TPR at the primary operating point (median queries to detection)."""
    primary = results["meta"]["primary_fpr"]
    detectors = _detectors(results)
    rows = []
    for scenario, block in results["scenarios"].items():
        row = [scenario, str(block["accounts"])]
        for name in detectors:
            m = block["detectors"][name]
            median = m["queries_until_detection"][primary]["median"]
            row.append(f"{fmt_rate(m['tpr'][primary])} ({fmt_queries(median)})")
        rows.append(row)
    fpr_row = ["*benign test FPR*", str(results["meta"]["benign_test_accounts"])]
    fpr_row += [fmt_rate(results["detectors"][name]["benign"]["fpr"][primary]) for name in detectors]
    rows.append(fpr_row)
    title = (
        f"TPR at {_pct(primary)} account-level FPR (median queries until detection); "
        f"size={results['meta']['size']}, seed={results['meta']['seed']}"
    )
    return title + "\n\n" + _table(["scenario", "accounts", *detectors], rows)


def thresholds_table(results: dict) -> str:
    header = ["detector"]
    for key in results["meta"]["operating_fprs"]:
        header += [f"threshold @{_pct(key)}", f"benign test FPR @{_pct(key)}"]
    header += ["fit (s)", "score (s)"]
    rows = []
    for name in _detectors(results):
        d = results["detectors"][name]
        row = [name]
        for key in results["meta"]["operating_fprs"]:
            row += [f"{d['thresholds'][key]:.4g}", fmt_rate(d["benign"]["fpr"][key])]
        row += [f"{d['fit_seconds']:.1f}", f"{d['score_seconds']:.1f}"]
        rows.append(row)
    return _table(header, rows)


def hard_benign_table(results: dict) -> str:
    detectors = _detectors(results)
    keys = results["meta"]["operating_fprs"]
    header = ["benign class", "accounts"] + [f"{name} ({' / '.join(_pct(k) for k in keys)})" for name in detectors]
    has_reasons = "probewatch" in detectors
    if has_reasons:
        header.append("probewatch: top reasons of flagged accounts")
    first = results["detectors"][detectors[0]]["benign"]
    rows = []
    for kind in [*list(first["by_kind"]), "all"]:
        blocks = {
            name: (
                results["detectors"][name]["benign"]
                if kind == "all"
                else results["detectors"][name]["benign"]["by_kind"][kind]
            )
            for name in detectors
        }
        row = [kind if kind != "all" else "**all benign test**", str(blocks[detectors[0]]["accounts"])]
        row += [" / ".join(fmt_rate(blocks[name]["fpr"][k]) for k in keys) for name in detectors]
        if has_reasons:
            parts = []
            for k in keys:
                reasons = blocks["probewatch"]["top_reasons"][k]
                if reasons:
                    parts.append(f"@{_pct(k)}: " + ", ".join(f"`{n}` ({c})" for n, c in reasons))
            row.append("; ".join(parts) or "–")
        rows.append(row)
    return _table(header, rows)


BLENDED_PROTOCOL = """\
Each mixed account is an ordinary user of 1,000-2,000 queries (at default size) with bursts of
3-20 extraction queries inserted at random times (`heldout_mixed_5pct`: 500-2,000 queries,
bursts of 2-12 in the held-out wordings); the `benign:long_chat` test accounts are
ordinary users built by the same generator at the same length, without the bursts. Per detector:
the AUC over those two groups alone, then the median mixed account score and the highest
`benign:long_chat` score (account scores are the maximum over the stream, as everywhere here)."""


DOUBLES_PROTOCOL = """\
Which benign traffic each scenario resembles, as probewatch scores it: among benign test classes
with at least {min_accounts} accounts, the one whose accounts it separates worst from the scenario's (lowest
AUC of that class against the scenario), and the share of that class scoring at or above the
scenario's median account. Where that AUC is near 0.5, the class's accounts send, account by
account, the same evidence as the attack's: no per-account threshold separates the two, and
what can is evidence from beyond the account (the campaign layer: shared wrappers, payload
regions, request metadata)."""


def _fmt_score(x) -> str:
    return "–" if _missing(x) else f"{x:.3g}"


def blended_table(results: dict) -> str | None:
    """Mixed scenarios against the benign users of their own length; None without such users."""
    blended = results.get("blended") or {}
    if not blended.get("scenarios"):
        return None
    detectors = _detectors(results)
    header = ["scenario"] + [f"{name}: AUC (median mixed / max long benign)" for name in detectors]
    rows = []
    for scenario, per_detector in blended["scenarios"].items():
        row = [scenario]
        for name in detectors:
            m = per_detector[name]
            row.append(
                f"{fmt_rate(m['auc'])} ({_fmt_score(m['median_mixed_score'])} / {_fmt_score(m['max_long_benign_score'])})"
            )
        rows.append(row)
    return _table(header, rows)


def doubles_table(results: dict) -> str | None:
    """Each scenario's nearest benign class for probewatch; None when the run has no probewatch."""
    doubles = (results.get("doubles") or {}).get("scenarios")
    if not doubles:
        return None
    primary = results["meta"]["primary_fpr"]
    header = [
        "scenario",
        f"probewatch TPR @{_pct(primary)}",
        "nearest benign class (accounts)",
        "AUC against it",
        "its share at or above the median attack account",
        "AUC against all benign",
    ]
    rows = []
    for scenario, d in doubles.items():
        tpr = results["scenarios"][scenario]["detectors"]["probewatch"]["tpr"][primary]
        rows.append(
            [
                scenario,
                fmt_rate(tpr),
                f"`{d['double']}` ({d['double_accounts']})",
                fmt_rate(d["auc_vs_double"]),
                fmt_rate(d["double_share_at_or_above_median"]),
                fmt_rate(d["auc_vs_all_benign"]),
            ]
        )
    return _table(header, rows)


def scenario_table(results: dict, scenario: str) -> str:
    keys = results["meta"]["operating_fprs"]
    primary = results["meta"]["primary_fpr"]
    block = results["scenarios"][scenario]
    header = ["detector", "AUC"] + [f"TPR @{_pct(k)}" for k in keys]
    header += [f"detected @{_pct(primary)}", "median queries", "p90 queries"]
    header += [f"median queries @{_pct(k)}" for k in keys if k != primary]
    campaigns = next(iter(block["detectors"].values())).get("campaigns", {})
    if campaigns:
        header += [f"campaign flagged share ({' / '.join(_pct(k) for k in keys)})"]
    rows = []
    for name in _detectors(results):
        m = block["detectors"][name]
        delay = m["queries_until_detection"][primary]
        row = [name, fmt_rate(m["auc"])] + [fmt_rate(m["tpr"][k]) for k in keys]
        row += [f"{delay['detected']}/{delay['accounts']}", fmt_queries(delay["median"]), fmt_queries(delay["p90"])]
        row += [fmt_queries(m["queries_until_detection"][k]["median"]) for k in keys if k != primary]
        if campaigns:
            row.append(
                "; ".join(" / ".join(fmt_rate(c["flagged_share"][k]) for k in keys) for c in m["campaigns"].values())
            )
        rows.append(row)
    return _table(header, rows)


PROTOCOL = """\
Every detector is fitted on the benign **calibration** accounts only, and its two operating
points come from that benign data only: probewatch is calibrated from scratch on these
accounts (`Engine.from_benign_embeddings`) and operated at its own `flag` threshold
(target FPR 0.1 %) and `watch` threshold (1 %); each baseline is fitted on them and its
thresholds are the smallest scores that at most 0.1 % / 1 % of the calibration accounts ever
reach (`StreamingBaseline.calibrated_threshold`). Calibration and test accounts share no
account, source unit or prompt text. Every test account (the benign test pool: ordinary users
and six hard-benign classes; and every attack scenario) is then streamed through each detector
as a fresh account, query by query in time order, with a score recorded after every query
(probewatch: `observe_embeddings` in chunks of one account, which gives the same verdicts as
one-at-a-time calls; online population updates off). An account's score is the maximum over
its stream; it is *flagged* at an operating point once any score reaches the threshold, and its
*queries until detection* are the number of its queries up to and including that one (for
mixed accounts, all queries, benign ones included). Each scenario's attack accounts are compared
with the whole benign test pool: ROC AUC over accounts, TPR at each threshold, the realised
benign test FPR (which can differ from the target: it is measured on accounts the thresholds
never saw), queries until detection over the detected accounts (median and 90th percentile),
and for split campaigns the share of the campaign's accounts flagged. The `heldout_*` rows are
the six pure strategies written a second time in other wordings, from other text and by other
selection code (`bench/traffic/heldout_attacks.py`), fixed before any detector was measured on
them: the gap between a strategy's row and its `heldout_` row is what tuning to the benchmark's
own wordings would have bought. Since 0.12.5 the `heldout_perturbation_chain` row is spent: its
misses were looked at to design the deep-path walk-away steps; the `third_perturbation_chain`
row (`bench/traffic/third_attacks.py`: suffix searches and attribute sweeps from other seeds)
was written and fixed after that and before any detector was measured on it. Since 0.12.6 that
row is spent too (its misses were looked at to let a deep path reverse once and to bound its
close neighbours); the `fourth_perturbation_chain` row (`bench/traffic/fourth_attacks.py`:
CheckList-style behavioural edits, two to five chains walked at once) was written and committed
before that change and before any detector was measured on it. Its misses were looked at after
0.12.6 was measured on it and nothing was changed for them, so its 0.12.6 number is blind but
the row is spent for the next change; the `fifth_perturbation_chain` row
(`bench/traffic/fifth_attacks.py`: PromptBench-style robustness probes that append a distractor,
drop it again or swap a synonym) was committed before that look, as the next blind check. In
0.12.7 two more were committed before any detector ran on them: `sixth_perturbation_chain`
(`bench/traffic/sixth_attacks.py`: occlusion, LIME-style word samples and bisection between
two seeds, every probe an edit of its seed, not of the query before) and then
`seventh_perturbation_chain` (`bench/traffic/seventh_attacks.py`: one word replaced, or one
output instruction added, per query). After the sixth was measured, the structure of its
accounts (and, beside them, of the fourth's and fifth's) was compared with the benign
classes' and nothing was changed for it; so the fourth, fifth and sixth rows are spent for
the next change and the seventh is the blind check. In 0.13.0 the sixth's prompts designed the
neighbourhood-probe rate (small word-level edits of three or more of an account's last 16
prompts that lack a word those prompts share), the seventh was its blind check, and both are
spent; `eighth_perturbation_chain` (`bench/traffic/eighth_attacks.py`: CheckList test suites
applied to a seed, one or two tests a query) was committed before the seventh's result was
looked at and is the next blind check. In 0.13.1 the seventh's prompts (and the spent fourth's,
fifth's and sixth's) designed probes around a seed that is never sent (a query one or two words
off the words two thirds of its near neighbours share, where other neighbours vary other seed
words), and the eighth was its blind check; both are spent. `ninth_perturbation_chain`
(`bench/traffic/ninth_attacks.py`: character-level probes around a seed in the manner of
DeepWordBug and TextBugger) was committed before any detector ran on it and before the
eighth's result was looked at, but after that rule was designed, by its designer: its 0.13.1
number is not a blind check of the rule; nobody had looked at its misses when 0.15.0 was
measured on it. In 0.15.0 the fifth's chains (spent) designed the rule that a prompt which
extends an already extended prompt, or appends what the account appended lately, is an edit,
not a conversation turn; `tenth_perturbation_chain` (`bench/traffic/tenth_attacks.py`:
IFEval-style output constraints stacked onto a task one at a time, changed or taken back) was
written by the rule's designer after the fifth's structure was looked at, and committed before
any detector ran on it. It read 0 % before the change; its number was then seen while choosing
between three versions of the rule (the branch alone; repeated additions remembered 16 deep;
64 deep with digits aside), so it is spent, and the ninth's unchanged row is the change's
other check (its probes append nothing). `eleventh_perturbation_chain`
(`bench/traffic/eleventh_attacks.py`: persona grids, a fixed set of payloads sent again under
one persona or audience line after another) was committed after 0.15.0 was measured and before
any detector ran on it; its structure then designed 0.16.0's grid probes (a query made of
lines the account sent before, in a combination it never sent), so it is spent.
`twelfth_perturbation_chain` (`bench/traffic/twelfth_attacks.py`: news passages under 4-10
task templates, the passage inline, on its own line or in quotes) was committed before that
design and before any detector ran on it, by the rule's designer, who had already thought of
comparing prompts by their lines: the blind check of 0.16.0, weaker than one written before
the idea. Its structure and the share of its queries each candidate rule marked then designed
0.16.1 (parts cut after sentences and colons, retries as one level), so it is spent.
`thirteenth_perturbation_chain` (`bench/traffic/thirteenth_attacks.py`: classification items
asked again under other sets of worked examples) was written before that design and committed
before any detector ran on it. Its blind numbers: 0.16.0 65 %, and a first version of 0.16.1
that required the two groups of parts to be shared exactly 5 %; the shipped version (0.16.0's
test over the new parts) was chosen after seeing them, so it is spent.
`fourteenth_perturbation_chain` (`bench/traffic/fourteenth_attacks.py`: fixed follow-ups after
one pasted conversation history after another) was written after that choice and committed
before any detector ran on it: its 0.16.1 number is the blind check of 0.16.1. The share of
its queries the rule marks was seen after that, so it is spent for the next change. `heldout_mixed_5pct` (blended accounts a second time: the held-out
wordings in bursts of 2-12 with the account's own queries sometimes between them, on shorter
benign bases) was committed before any detector ran on it, as the blind check of evidence
from short stretches of a long history; the `mixed_*` rows are the ones such evidence may be
designed on. In the session of 0.16.2 each account's highest look-alike, topic-return,
walk-away and probe scores were printed for `heldout_template_sweep`,
`heldout_cot_elicitation`, `heldout_corpus_sentences` and six of `heldout_mixed_5pct`'s accounts
(its blends of those strategies), so those rows are spent for a change built on how an
account's evidence splits between those lines. 0.17.0's frame threads were designed on the
`mixed_*` rows and one benign summarisation-app account; `heldout_mixed_5pct` was their blind
check (its row read in each of three runs, its accounts not looked at), so it is spent for the
next change for blended accounts. Leave one strategy out: no detector here, probewatch included, fits
anything on attack traffic (calibration is benign accounts only), so every row is already
scored by a detector trained without its strategy; the one component probewatch fits with
extraction-like positives, the elicitation head, acts only in the campaign layer, whose levels
these tables do not count (an account's score here is its own; campaigns are measured in
`docs/benchmark/hydra/`), and has its own held-out tables (`docs/benchmark/elicitation.md`)."""


def _fw(block: dict) -> str:
    """'flag / watch' rates of a bench.unseen rates block, in percent."""
    return f"{100 * block['flag']:.1f} / {100 * block['watch']:.1f}"


def unseen_population_table(unseen: dict) -> str:
    rows = []
    for row in unseen["populations"]:
        warm = row["warm_up"]
        rows.append(
            [
                row["population"],
                _fw(row["shipped_calibration_test_half"]),
                str(row["unseen"]["accounts"]),
                _fw(row["unseen"]),
                str(row["test_half_before"]["accounts"]),
                _fw(row["test_half_before"]),
                _fw(row["test_half_after_warm_up"]),
                f"{warm.get('accounts', 0)} ({warm.get('rows', 0)} rows)" if warm.get("learned") else "warming up",
            ]
        )
    worst = max(unseen["populations"], key=lambda r: (r["unseen"]["flag"], r["unseen"]["watch"]))
    after = max(r["test_half_after_warm_up"]["flag"] for r in unseen["populations"])
    table = _table(
        [
            "held-out population",
            "shipped calibration, test half: % flag / % watch",
            "accounts",
            "out of the box: % flag / % watch",
            "test-half accounts",
            "before warm-up",
            "after warm-up",
            "warm-up: accounts that taught",
        ],
        rows,
    )
    return (
        table
        + f"\n\nWorst population out of the box: `{worst['population']}` ({_fw(worst['unseen'])} % flag / watch); "
        f"highest flag rate after warm-up: {100 * after:.1f} %."
    )


def _control(block: dict, level: str) -> str:
    """'clean → ' when the results carry the no-attacker control."""
    clean = block.get("after_clean_warm_up")
    return "" if clean is None else f"{100 * clean[level]:.0f} → "


def _control_benign(p: dict, level: str) -> str:
    clean = p.get("benign_after_clean_warm_up")
    return "" if clean is None else f"{100 * clean[level]:.1f} → "


def poisoning_table(unseen: dict) -> str:
    p = unseen["poisoning"]
    rows = [
        [
            scenario,
            str(block["accounts"]),
            f"{100 * block['before']['flag']:.0f} → {_control(block, 'flag')}{100 * block['after']['flag']:.0f}",
            f"{100 * block['before']['watch']:.0f} → {_control(block, 'watch')}{100 * block['after']['watch']:.0f}",
        ]
        for scenario, block in p["attacks"].items()
    ]
    rows.append(
        [
            "*benign test accounts not in the warm-up* (FPR)",
            str(p["benign_before"]["accounts"]),
            f"{100 * p['benign_before']['flag']:.1f} → {_control_benign(p, 'flag')}{100 * p['benign_after']['flag']:.1f}",
            f"{100 * p['benign_before']['watch']:.1f} → {_control_benign(p, 'watch')}"
            f"{100 * p['benign_after']['watch']:.1f}",
        ]
    )
    warm = p["warm_up"]
    return (
        f"Warm-up: {warm['benign_accounts']} benign accounts and {warm['poisoners']} patient attackers; "
        f"{warm['poisoners_reaching_watch']} attackers reached watch during the warm-up; "
        f"{warm.get('accounts', 0)} accounts ({warm.get('rows', 0)} feature rows) taught the tables.\n\n"
        + _table(
            [
                "scenario",
                "accounts",
                "% flagged: before → after a clean warm-up → after the poisoned one",
                "% watched: before → clean → poisoned",
            ],
            rows,
        )
    )


UNSEEN_PROTOCOL = """\
probewatch only (the campaign layer off: each account is judged alone), at its own `flag`
(0.1 %) and `watch` (1 %) thresholds. **Shipped calibration**: what `Engine()` loads, on the
population's test half. **Out of the box**: calibrated on every other benign
population's calibration half; the held-out population's accounts (both halves, none seen)
are streamed as new accounts. **Warm-up**: the same calibration learns the provider's
normal (`probewatch.detect.learning`, shipped rules: accounts with 16+ queries, a day old,
never at watch, at most 16 rows each, live rows at most half of each table) from the
held-out population's calibration half plus 8 test accounts of every other population,
interleaved in time; its test half is then scored before and after. **Poisoning**: the full
calibration learns from half of every population's test accounts plus 10 patient attackers
per scenario, each an ordinary chat user for 40-120 queries who then runs the scenario's
extraction stream; every account of the scenario (those streams included) is then scored
by the plain and the learned engine. Thresholds never move with learning."""


def _resolution_caveat(meta: dict) -> list[str]:
    """A note when the calibration set is too small to resolve an operating point."""
    n = meta["calibration_accounts"]
    unresolved = [_pct(k) for k in meta["operating_fprs"] if float(k) * n < 1]
    if not unresolved:
        return []
    return [
        f"With {n} calibration accounts, a rate of {' or '.join(unresolved)} allows no calibration account to "
        "be flagged, so a baseline's threshold there is just above the highest calibration account "
        "(the operating points may coincide), and probewatch's is extrapolated from the exponential tail "
        "of its benign lifetime scores. Use `--size default` for meaningful low-FPR numbers.",
        "",
    ]


def markdown(results: dict) -> str:
    meta = results["meta"]
    primary = meta["primary_fpr"]
    parts = [
        f"# Detection benchmark: {', '.join(_detectors(results))}",
        "",
        f"Traffic size `{meta['size']}`, seed {meta['seed']}: {meta['calibration_accounts']} calibration accounts, "
        f"{meta['benign_test_accounts']} benign test accounts, {meta['attack_accounts']} attack accounts, "
        f"{meta['distinct_texts']} distinct texts embedded with {meta['embedding_model']}.",
        "",
        "Reproduce with:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "## Main table",
        "",
        main_table(results),
        "",
        "## Protocol",
        "",
        PROTOCOL,
        "",
        "## Thresholds (from calibration) and realised benign test FPR",
        "",
        thresholds_table(results),
        "",
        *_resolution_caveat(meta),
        "## False positives per benign class",
        "",
        f"Share of each benign test class flagged at {' / '.join(_pct(k) for k in meta['operating_fprs'])} FPR. "
        "For probewatch, the reasons are the features named by the verdict at the query where a flagged "
        "account first reached the threshold (count of flagged accounts naming each).",
        "",
        hard_benign_table(results),
        "",
        "## Per scenario",
        "",
        f"Queries until detection at {_pct(primary)} FPR over detected accounts; `–` = none detected.",
    ]
    for scenario, block in results["scenarios"].items():
        parts += [
            "",
            f"### {scenario}",
            "",
            f"{block['accounts']} accounts ({', '.join(block['kinds'])}), {block['queries']} queries, "
            f"{block['attack_queries']} of them extraction queries.",
            "",
            scenario_table(results, scenario),
        ]
    doubles = doubles_table(results)
    if doubles is not None:
        protocol = DOUBLES_PROTOCOL.format(min_accounts=results["doubles"]["min_accounts"])
        parts += ["", "## Nearest benign class per scenario", "", protocol, "", doubles]
    blended = blended_table(results)
    if blended is not None:
        parts += [
            "",
            "## Blended accounts against ordinary users of their length",
            "",
            BLENDED_PROTOCOL,
            "",
            f"{results['blended']['long_benign_accounts']} `benign:long_chat` accounts.",
            "",
            blended,
        ]
    if results.get("unseen"):
        parts += [
            "",
            "## Unseen apps: leave one population out, then learn the provider's normal",
            "",
            UNSEEN_PROTOCOL,
            "",
            unseen_population_table(results["unseen"]),
            "",
            "### Poisoned warm-up",
            "",
            poisoning_table(results["unseen"]),
        ]
    parts += [
        "",
        "## Plots",
        "",
        f"- ROC curves per scenario (accounts; log FPR axis): ![ROC]({ROC_PLOT})",
        f"- Share of attack accounts detected vs queries sent, at {_pct(primary)} FPR: "
        f"![detection delay]({DELAY_PLOT})",
    ]
    if results.get("risk_traces"):
        parts.append(f"- probewatch risk over time for a few attack and hard-benign accounts: ![risk]({RISK_PLOT})")
    timings = meta.get("timings_seconds", {})
    parts += [
        "",
        "## Traffic",
        "",
        "```",
        meta["traffic"],
        "```",
        "",
        "## Timings",
        "",
        ", ".join(f"{k}: {v:.1f} s" for k, v in timings.items()),
        "",
    ]
    return "\n".join(parts)


# -- results.json ---------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """NaN and +-inf become null (JSON has no such numbers): a null score means "never scored"."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_results_json(results: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "results.json"
    path.write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


# -- plots -------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _styles(detectors: list[str]) -> dict[str, dict[str, Any]]:
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    styles, i = {}, 0
    for name in detectors:
        if name == "probewatch":  # the subject of the benchmark: drawn heavier, always black
            styles[name] = {"color": "black", "linewidth": 2.2, "zorder": 5}
        else:
            styles[name] = {"color": palette[i % len(palette)], "linewidth": 1.2, "alpha": 0.85}
            i += 1
    return styles


def _grid(plt, n: int, title: str):
    cols = min(PLOT_COLUMNS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.suptitle(title)
    return fig, list(axes.flat[:n])


def _scores(records: list[dict], pool: str, name: str) -> list[float]:
    # results.json turns -inf (never scored) into null; read both forms
    return [float("-inf") if r["score"][name] is None else r["score"][name] for r in records if r["pool"] == pool]


def plot_roc(results: dict, out_dir: Path) -> Path:
    plt = _pyplot()
    detectors = _detectors(results)
    styles = _styles(detectors)
    records = results["accounts"]
    n_benign = sum(r["pool"] == "test_benign" for r in records)
    floor = 0.5 / max(n_benign, 1)  # FPR 0 drawn at half the smallest non-zero FPR on the log axis
    scenarios = list(results["scenarios"])
    fig, axes = _grid(plt, len(scenarios), f"Account-level ROC vs {n_benign} benign test accounts")
    for ax, scenario in zip(axes, scenarios, strict=True):
        for name in detectors:
            fpr, tpr = roc_curve(_scores(records, "test_benign", name), _scores(records, scenario, name))
            auc = results["scenarios"][scenario]["detectors"][name]["auc"]
            ax.plot(
                np.maximum(fpr, floor), tpr, drawstyle="steps-post", label=f"{name} ({fmt_rate(auc)})", **styles[name]
            )
        for fpr in results["meta"]["operating_fprs"]:
            ax.axvline(float(fpr), color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(floor, 1.0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(scenario, fontsize=10)
        ax.set_xlabel("benign FPR")
        ax.set_ylabel("TPR")
        ax.legend(fontsize=6, loc="lower right", title="AUC", title_fontsize=6)
    fig.tight_layout()
    path = Path(out_dir) / ROC_PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_detection_delay(results: dict, out_dir: Path) -> Path:
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    detectors = _detectors(results)
    styles = _styles(detectors)
    primary = results["meta"]["primary_fpr"]
    records = results["accounts"]
    scenarios = list(results["scenarios"])
    fig, axes = _grid(plt, len(scenarios), f"Share of attack accounts detected vs queries sent ({_pct(primary)} FPR)")
    for ax, scenario in zip(axes, scenarios, strict=True):
        members = [r for r in records if r["pool"] == scenario]
        longest = max(r["queries"] for r in members)
        for name in detectors:
            queries, share = detection_curve([r["queries_until_detection"][name][primary] for r in members], longest)
            ax.plot(queries, share, drawstyle="steps-post", label=name, **styles[name])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # short streams would get crowded minor labels
        ax.set_xlim(1, max(longest, 2))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(scenario, fontsize=10)
        ax.set_xlabel("queries sent by the account")
        ax.set_ylabel("share detected")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(detectors), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(out_dir) / DELAY_PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_risk_over_time(results: dict, out_dir: Path) -> Path | None:
    traces = results.get("risk_traces") or []
    if not traces:
        return None
    plt = _pyplot()
    fprs = [float(f) for f in results["meta"]["operating_fprs"]]
    exceedances = [np.maximum(1.0 - np.asarray(t["risk"], dtype=np.float64), MIN_EXCEEDANCE) for t in traces]
    # the axis reaches a little past the riskiest point or the flag line, whichever is higher
    floor = max(MIN_EXCEEDANCE, min(min(float(e.min()) for e in exceedances if e.size), min(fprs)) / 3)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True, squeeze=False)
    groups = (
        ("attack accounts", [i for i, t in enumerate(traces) if t["label"] == 1]),
        ("hard-benign accounts (most suspicious of their class)", [i for i, t in enumerate(traces) if t["label"] == 0]),
    )
    for ax, (title, members) in zip(axes[0], groups, strict=True):
        for i in members:
            trace, exceedance = traces[i], exceedances[i]
            x = np.arange(1, len(exceedance) + 1)
            (line,) = ax.plot(x, exceedance, linewidth=1.3, label=f"{trace['kind']} ({trace['account'][-6:]})")
            attack = np.asarray(trace["is_attack"], dtype=bool)
            if attack.any() and not attack.all():  # mixed account: mark which queries were extraction
                ax.plot(x[attack], exceedance[attack], "|", color=line.get_color(), markersize=7)
        for fpr, label in zip(fprs, ("flag", "watch"), strict=True):
            ax.axhline(fpr, color="grey", linestyle=":", linewidth=0.9)
            ax.annotate(
                f"{label} ({_pct(fpr)})",
                (0, fpr),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="grey",
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("queries sent by the account")
        if members:
            ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("1 − risk (share of benign accounts\never scoring this high)")
    axes[0][0].set_ylim(1.5, floor)  # inverted: riskier is higher
    fig.suptitle("probewatch risk over time (| marks extraction queries in mixed accounts)")
    fig.tight_layout()
    path = Path(out_dir) / RISK_PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_text_outputs(results: dict, out_dir: Path) -> list[Path]:
    """results.json and report.md (cheap: rewrite them when the results change)."""
    out_dir = Path(out_dir)
    report = out_dir / "report.md"
    report.write_text(markdown(results), encoding="utf-8")
    return [write_results_json(results, out_dir), report]


def write_all(results: dict, out_dir: Path) -> list[Path]:
    """Plots, results.json and report.md into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_roc(results, out_dir), plot_detection_delay(results, out_dir)]
    risk = plot_risk_over_time(results, out_dir)
    if risk is not None:
        written.append(risk)
    else:  # no probewatch in this run: a plot left by an earlier run would be stale
        (out_dir / RISK_PLOT).unlink(missing_ok=True)
    return write_text_outputs(results, out_dir) + written
