"""Fit and evaluate the reasoning-trace elicitation head; write it and its report.

    python -m bench.elicitation.train [--out-head PATH] [--out-report PATH]

Embeds the dataset of ``dataset.py`` once (through ``bench/embedcache.py``), chooses the L2
weight by 5-fold cross-validation over wordings (every wording's texts in one fold, so a fold
is scored on wordings its model never saw; the held-out sets play no part), then measures:

- in-distribution CV: folds by payload, every wording seen in training;
- leave-one-wording-group-out: each of the five positive styles held out in turn (with a
  near-miss family or two, so the negatives are unseen wordings too);
- leave-one-intent-out: each of the four positive intents held out in turn;
- the head fitted on all training data, on the benchmark's ``_COT_WRAPPERS`` (never trained on)
  around fresh payloads against held-out plain prompts and near-miss wordings never trained on.

Thresholds for "TPR at x % FPR" are set on the evaluation's own negatives (plain + near-miss):
the score that at most x % of them exceed. Nothing here is tuned on the held-out sets.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.elicitation import dataset as ds
from bench.metrics import roc_auc
from bench.traffic import sources
from probewatch.campaigns.elicitation import DEFAULT_HEAD_PATH, ElicitationHead

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPO / "docs" / "benchmark" / "elicitation.md"
L2_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
FOLDS = 5
FPRS = (0.01, 0.001)


# --- the model -----------------------------------------------------------------------------


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 100) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by damped Newton steps: (weights, bias).

    Minimises ``sum_i s_i * logloss_i + l2/2 * |w|^2`` with the weights ``s`` summing to 1/2
    per class, so the bias is not penalised and neither class dominates."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    n_pos = max(1.0, float(y.sum()))
    s = np.where(y == 1, 0.5 / n_pos, 0.5 / max(1.0, n - n_pos))
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    beta = np.zeros(d + 1)

    def loss(b: np.ndarray) -> float:
        z = xa @ b
        return float(np.sum(s * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(reg * b * b))

    current = loss(beta)
    for _ in range(max_iter):
        p = 0.5 * (1.0 + np.tanh(0.5 * (xa @ beta)))
        grad = xa.T @ (s * (p - y)) + reg * beta
        hess = (xa.T * (s * p * (1.0 - p))) @ xa + np.diag(reg + 1e-12)
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if decrement < 1e-12:
            break
        t = 1.0
        while True:  # backtracking (Armijo) keeps the step from overshooting on near-separable data
            trial = loss(beta - t * step)
            if trial <= current - 1e-4 * t * decrement or t < 1e-10:
                break
            t *= 0.5
        beta -= t * step
        current = trial
    return beta[:-1], float(beta[-1])


def predict(weights: np.ndarray, bias: float, x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * (x @ weights + bias)))


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float) -> np.ndarray:
    """Each row's probability under the model fitted without its fold."""
    scores = np.empty(len(y))
    for fold in np.unique(folds):
        held = folds == fold
        w, b = fit_logistic(x[~held], y[~held], l2)
        scores[held] = predict(w, b, x[held])
    return scores


# --- metrics -------------------------------------------------------------------------------


def threshold_at_fpr(negatives: np.ndarray, fpr: float) -> float:
    """The score that at most ``fpr`` of the negatives exceed (flag when ``score > threshold``)."""
    ranked = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    return float(ranked[min(int(np.floor(fpr * ranked.size)), ranked.size - 1)])


@dataclass
class Row:
    name: str
    n_pos: int
    n_plain: int
    n_near: int
    auc: float
    tpr: tuple[float, ...]
    auc_near: float
    near_fpr: tuple[float, ...]


def evaluate(name: str, pos: np.ndarray, plain: np.ndarray, near: np.ndarray) -> Row:
    negatives = np.concatenate([plain, near])
    thresholds = [threshold_at_fpr(negatives, f) for f in FPRS]
    return Row(
        name,
        len(pos),
        len(plain),
        len(near),
        roc_auc(negatives, pos),
        tuple(float(np.mean(pos > t)) for t in thresholds),
        roc_auc(near, pos),
        tuple(float(np.mean(near > t)) for t in thresholds),
    )


# --- folds ---------------------------------------------------------------------------------


def _hash_fold(key: str, k: int) -> int:
    return sources.stable_hash(f"{ds.SEED}/fold:{key}") % k


def folds_by_payload(examples: list[ds.Example]) -> np.ndarray:
    return np.array([_hash_fold(e.units[0], FOLDS) for e in examples])


def folds_by_wording(examples: list[ds.Example]) -> np.ndarray:
    """Every wording's texts in one fold (plain prompts by payload): for choosing L2."""
    return np.array([_hash_fold(e.wording or e.units[0], FOLDS) for e in examples])


def folds_holding_out(examples: list[ds.Example], key: Callable[[ds.Example], str], groups: tuple[str, ...]):
    """Positives fold by ``key`` (one group per fold); near-miss families and plain prompts are
    dealt over the same folds, so each fold's negatives are unseen as well."""
    k = len(groups)
    out = []
    for e in examples:
        if e.label == 1:
            out.append(groups.index(key(e)))
        elif e.intent == "plain":
            out.append(_hash_fold(e.units[0], k))
        else:
            out.append(ds.NEAR_MISS_FAMILIES.index(e.intent) % k)
    return np.array(out)


# --- the run -------------------------------------------------------------------------------


def choose_l2(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[float, list[tuple[float, float, float]]]:
    """(chosen L2, [(l2, mean fold AUC, pooled TPR at 1 % FPR)]): the largest L2 whose mean fold
    AUC is within 0.001 of the best, pooled TPR at 1 % FPR breaking near-ties toward sharper heads."""
    table = []
    for l2 in L2_GRID:
        scores = out_of_fold(x, y, folds, l2)
        fold_aucs = [roc_auc(scores[(folds == f) & (y == 0)], scores[(folds == f) & (y == 1)]) for f in range(FOLDS)]
        tpr = float(np.mean(scores[y == 1] > threshold_at_fpr(scores[y == 0], 0.01)))
        table.append((l2, float(np.mean(fold_aucs)), tpr))
    best = max(auc for _, auc, _ in table)
    chosen = max(l2 for l2, auc, _ in table if auc >= best - 1e-3)
    return chosen, table


def _embed(texts: list[str]) -> tuple[np.ndarray, str]:
    from bench.embedcache import EmbeddingCache
    from probewatch import Embedder

    embedder = Embedder(device="cpu")
    return EmbeddingCache(embedder).embed(texts).astype(np.float64), embedder.model_id


def run(out_head: Path, out_report: Path) -> dict:
    data = ds.build_dataset()
    texts = data.all_texts()
    print(f"embedding {len(texts)} texts (cached ones are read back) ...", flush=True)
    vectors, model_id = _embed(texts)
    index = {t: i for i, t in enumerate(texts)}

    def matrix(part: list[ds.Example]) -> np.ndarray:
        return vectors[[index[e.text] for e in part]]

    train = data.train
    x, y = matrix(train), np.array([e.label for e in train], dtype=np.float64)
    plain_mask = np.array([e.intent == "plain" for e in train])
    near_mask = (y == 0) & ~plain_mask

    l2, grid = choose_l2(x, y, folds_by_wording(train))
    print(f"L2 chosen by wording-grouped CV: {l2:g}", flush=True)

    rows: dict[str, list[Row]] = {}
    oof_id = out_of_fold(x, y, folds_by_payload(train), l2)
    rows["in-distribution CV (5 folds by payload)"] = [
        evaluate("all intents", oof_id[y == 1], oof_id[plain_mask], oof_id[near_mask])
    ]

    def held_out_rows(key, groups) -> list[Row]:
        folds = folds_holding_out(train, key, groups)
        scores = out_of_fold(x, y, folds, l2)
        out = [evaluate("pooled", scores[y == 1], scores[plain_mask], scores[near_mask])]
        for g, group in enumerate(groups):
            pos = scores[(y == 1) & (folds == g)]
            out.append(evaluate(group, pos, scores[plain_mask & (folds == g)], scores[near_mask & (folds == g)]))
        return out

    rows["leave-one-wording-group-out (positive style held out)"] = held_out_rows(lambda e: e.group, ds.STYLES)
    rows["leave-one-intent-out"] = held_out_rows(lambda e: e.intent, ds.POSITIVE_INTENTS)

    weights, bias = fit_logistic(x, y, l2)
    wordings = {w.id: w for w in data.wordings}
    meta = {
        "model_id": model_id,
        "trainer": "bench.elicitation.train",
        "l2": l2,
        "train_positives": int(y.sum()),
        "train_plain": int(plain_mask.sum()),
        "train_near_miss": int(near_mask.sum()),
        "positive_wordings": sum(1 for w in wordings.values() if w.id.split("/")[0] in ds.POSITIVE_INTENTS),
        "near_miss_wordings": sum(1 for w in wordings.values() if w.id.startswith("near/")),
        "intents": list(ds.POSITIVE_INTENTS),
        "near_miss_families": list(ds.NEAR_MISS_FAMILIES),
    }
    head = ElicitationHead(weights, bias, meta)
    out_head.parent.mkdir(parents=True, exist_ok=True)
    head.save(out_head)

    wrap = head.probability(matrix(data.heldout_wrappers))
    hplain = head.probability(matrix(data.heldout_plain))
    hnear = head.probability(matrix(data.heldout_near_miss))
    final_rows = [evaluate("all 8 wrappers", wrap, hplain, hnear)]
    thresholds = [threshold_at_fpr(np.concatenate([hplain, hnear]), f) for f in FPRS]
    per_wrapper = []
    for i, w in enumerate(ds.heldout_wrapper_wordings()):
        mask = np.array([e.wording == w.id for e in data.heldout_wrappers])
        per_wrapper.append(
            (w.template, float(np.median(wrap[mask])), *[float(np.mean(wrap[mask] > t)) for t in thresholds])
        )
        final_rows.append(evaluate(f"wrapper {i + 1}", wrap[mask], hplain, hnear))
    rows["held-out benchmark wrappers (`_COT_WRAPPERS`), head fitted on all training data"] = final_rows

    near_by_wording = []
    for w in ds.near_miss_wordings(heldout=True):
        mask = np.array([e.wording == w.id for e in data.heldout_near_miss])
        near_by_wording.append(
            (w.template, float(np.median(hnear[mask])), *[float(np.mean(hnear[mask] > t)) for t in thresholds])
        )

    plain_thresholds = [float(np.percentile(hplain, 100 * (1 - f))) for f in FPRS]
    plain_operating = [
        ("held-out wrappers (all 8)", len(wrap), *[float(np.mean(wrap > t)) for t in plain_thresholds]),
        ("held-out near-miss wordings (all)", len(hnear), *[float(np.mean(hnear > t)) for t in plain_thresholds]),
    ]
    for family in ds.NEAR_MISS_FAMILIES:
        mask = np.array([e.intent == family for e in data.heldout_near_miss])
        if mask.any():
            rates = [float(np.mean(hnear[mask] > t)) for t in plain_thresholds]
            plain_operating.append((f"held-out near-miss: {family}", int(mask.sum()), *rates))

    accounts = account_level(data, wrap, hplain, hnear)

    percentiles = {
        "held-out plain prompts, final head": hplain,
        "training plain prompts, out-of-fold (in-distribution CV)": oof_id[plain_mask],
    }
    top_plain = sorted(zip(hplain, [e.text for e in data.heldout_plain], strict=True), reverse=True)[:5]
    result = {
        "l2": l2,
        "grid": grid,
        "rows": rows,
        "per_wrapper": per_wrapper,
        "near_by_wording": near_by_wording,
        "percentiles": percentiles,
        "top_plain": top_plain,
        "data": data,
        "meta": meta,
        "thresholds": thresholds,
        "plain_thresholds": plain_thresholds,
        "plain_operating": plain_operating,
        "accounts": accounts,
        "head_path": out_head,
    }
    out_report.parent.mkdir(parents=True, exist_ok=True)
    out_report.write_text(render(result), encoding="utf-8")
    print(f"wrote {out_head} and {out_report}", flush=True)
    return result


ACCOUNT_PROMPTS = 10
ACCOUNTS_PER_KIND = 50


def account_level(data: ds.ElicitationDataset, wrap: np.ndarray, plain: np.ndarray, near: np.ndarray) -> dict:
    """Mean probability over ``ACCOUNT_PROMPTS`` prompts of one account: plain accounts draw from
    the held-out plain prompts; an attack account from one benchmark wrapper's prompts, a
    near-miss account from one held-out near-miss wording's (subsets of 20-40 prompts, so these
    accounts overlap heavily: an illustration, not a benchmark)."""
    rng = np.random.default_rng(0)

    def accounts(scores: np.ndarray, count: int) -> np.ndarray:
        size = min(ACCOUNT_PROMPTS, len(scores))
        return np.array([rng.choice(scores, size, replace=False).mean() for _ in range(count)])

    plain_accounts = accounts(plain, 2000)
    wrapper_ids = np.array([e.wording for e in data.heldout_wrappers])
    attack = np.concatenate([accounts(wrap[wrapper_ids == w], ACCOUNTS_PER_KIND) for w in np.unique(wrapper_ids)])
    near_ids = np.array([e.wording for e in data.heldout_near_miss])
    near_accounts = {w: accounts(near[near_ids == w], ACCOUNTS_PER_KIND) for w in np.unique(near_ids)}
    thresholds = [threshold_at_fpr(plain_accounts, f) for f in FPRS]
    return {
        "n_plain": len(plain_accounts),
        "auc": roc_auc(plain_accounts, attack),
        "attack": (len(attack), *[float(np.mean(attack > t)) for t in thresholds]),
        "near": {w: (len(v), *[float(np.mean(v > t)) for t in thresholds]) for w, v in sorted(near_accounts.items())},
        "near_templates": {w.id: w.template for w in ds.near_miss_wordings(heldout=True)},
    }


# --- the report ----------------------------------------------------------------------------


def _f(value: float, digits: int = 3) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


def _cell(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render(r: dict) -> str:
    data: ds.ElicitationDataset = r["data"]
    meta = r["meta"]
    lines = [
        "# Reasoning-trace elicitation head",
        "",
        "A per-query score of how strongly a prompt asks the model to expose its reasoning (chain of thought, "
        "the deliberation behind a given answer, tool-use traces, rubric grades with per-criterion reasoning): "
        "logistic regression on the prompt's all-MiniLM-L6-v2 embedding "
        "(`probewatch.campaigns.elicitation.ElicitationHead`, shipped as `engine/data/elicitation_head.npz`).",
        "",
        "Reproduce with `python -m bench.elicitation.train` (deterministic; embeddings cached in "
        "`bench/.cache/embeddings`).",
        "",
        "## Data",
        "",
        f"Embedding model: {meta['model_id']}. {len(data.all_texts())} distinct texts; payloads are real questions, "
        "tasks, answers, documents and code from the benchmark loaders' **calibration half** only "
        "(`bench/traffic/sources.py`), plus 40 how-to tasks and 40 machine-learning/reasoning topics of our own.",
        "",
        "| part | texts | what |",
        "| --- | --- | --- |",
        f"| training positives | {meta['train_positives']} | {meta['positive_wordings']} wordings of our own: "
        f"4 intents ({', '.join(ds.POSITIVE_INTENTS)}) x 5 styles ({', '.join(ds.STYLES)}), "
        f"{ds.PER_POSITIVE_WORDING} payloads each |",
        f"| training near-misses (label 0) | {meta['train_near_miss']} | {meta['near_miss_wordings']} wordings in "
        f"{len(ds.NEAR_MISS_FAMILIES)} families ({', '.join(ds.NEAR_MISS_FAMILIES)}), "
        f"{ds.PER_NEAR_MISS_WORDING} payloads each |",
        f"| training plain prompts (label 0) | {meta['train_plain']} | mostly the wrapped payloads as users would "
        "send them (same topics with and without the ask), some pasted role prompts |",
        f"| held-out wrappers (label 1) | {len(data.heldout_wrappers)} | the benchmark's 8 `_COT_WRAPPERS` "
        f"(`bench/traffic/attacks.py`, never trained on) x {ds.PER_HELDOUT_WRAPPER} payloads |",
        f"| held-out near-misses (label 0) | {len(data.heldout_near_miss)} | "
        f"{len(ds.near_miss_wordings(heldout=True))} near-miss wordings never trained on (one to three per family), "
        f"up to {ds.PER_HELDOUT_NEAR_MISS_WORDING} payloads each (9 for the about_reasoning ones: 9 eval-part topics) |",
        f"| held-out plain prompts (label 0) | {len(data.heldout_plain)} | ShareGPT turns, SNIPS, MultiWOZ, role "
        "prompts, FanOutQA, FreshQA, WritingBench, Mind2Web |",
        "",
        "Within the calibration half, every source unit is assigned by hash to a *train* or an *eval* part; the "
        "held-out sets use eval units only, so they share no payload with training.",
        "",
        "## Method",
        "",
        "Class-balanced L2 logistic regression on the unit embedding (Newton's method, bias unpenalised). "
        "The L2 weight is chosen by 5-fold cross-validation with every wording's texts in one fold "
        "(plain prompts by payload): the largest L2 whose mean fold AUC is within 0.001 of the best. "
        f"Chosen: **{r['l2']:g}**.",
        "",
        "| L2 | mean fold AUC | pooled TPR at 1 % FPR |",
        "| --- | --- | --- |",
        *[f"| {l2:g} | {_f(auc, 4)} | {_f(tpr)} |" for l2, auc, tpr in r["grid"]],
        "",
        "## Results",
        "",
        "TPR at x % FPR: the threshold is the score that at most x % of that evaluation's negatives (plain + "
        "near-miss) exceed. *AUC vs near-miss* ranks the positives against the near-misses alone; "
        "*near-miss FPR* is the share of near-misses above the two thresholds. Cross-validated rows pool "
        "out-of-fold scores (near-miss families and plain prompts are dealt over the same folds, so their "
        "scores are out-of-fold too); per-group rows compare that group's positives with the negatives of its "
        "fold. With about 100-1,100 negatives per row, 0.1 % FPR rests on 0-1 negatives: read it as "
        "'above every (or all but one) negative'.",
        "",
    ]
    for title, rows in r["rows"].items():
        lines += [
            f"### {title}",
            "",
            "| evaluation | positives | negatives (plain + near-miss) | AUC | TPR @ 1 % FPR | TPR @ 0.1 % FPR "
            "| AUC vs near-miss | near-miss FPR @ 1 % / 0.1 % thresholds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            lines.append(
                f"| {row.name} | {row.n_pos} | {row.n_plain + row.n_near} ({row.n_plain} + {row.n_near}) | "
                f"{_f(row.auc)} | {_f(row.tpr[0], 2)} | {_f(row.tpr[1], 2)} | {_f(row.auc_near)} | "
                f"{_f(row.near_fpr[0], 3)} / {_f(row.near_fpr[1], 3)} |"
            )
        lines.append("")
    t1, t01 = r["thresholds"]
    lines += [
        "### Held-out wrappers one by one (final head)",
        "",
        f"Thresholds from the held-out negatives: {_f(t1, 4)} (1 % FPR) and {_f(t01, 4)} (0.1 % FPR).",
        "",
        "| wrapper | median probability | TPR @ 1 % FPR | TPR @ 0.1 % FPR |",
        "| --- | --- | --- | --- |",
        *[f"| {_cell(t)} | {_f(m)} | {_f(a, 2)} | {_f(b, 2)} |" for t, m, a, b in r["per_wrapper"]],
        "",
        "### Held-out near-miss wordings one by one (final head, same thresholds)",
        "",
        "| near-miss wording | median probability | FPR @ 1 % threshold | FPR @ 0.1 % threshold |",
        "| --- | --- | --- | --- |",
        *[f"| {_cell(t)} | {_f(m)} | {_f(a, 2)} | {_f(b, 2)} |" for t, m, a, b in r["near_by_wording"]],
        "",
        "### Thresholds from plain prompts alone (final head)",
        "",
        "A deployment sets its threshold on ordinary traffic. Here the thresholds are the 99th and 99.9th "
        f"percentiles of the held-out plain prompts ({_f(r['plain_thresholds'][0], 4)} and "
        f"{_f(r['plain_thresholds'][1], 4)}): the share of each set above them.",
        "",
        "| prompts | n | above the 99th percentile | above the 99.9th percentile |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {n} | {_f(a, 2)} | {_f(b, 2)} |" for name, n, a, b in r["plain_operating"]],
        "",
        "### Account level: mean probability over an account's prompts (illustration)",
        "",
        f"An account's score is its mean probability over {ACCOUNT_PROMPTS} prompts. "
        f"{r['accounts']['n_plain']} plain accounts draw from the held-out plain prompts; each attack account "
        f"uses one benchmark wrapper ({ACCOUNTS_PER_KIND} accounts per wrapper), each near-miss account one "
        "held-out near-miss wording. Thresholds: 1 % and 0.1 % of the plain accounts. Accounts of one wording "
        "are subsets of the same 20-40 prompts, so they overlap heavily.",
        "",
        f"Attack vs plain accounts: AUC {_f(r['accounts']['auc'])}.",
        "",
        "| accounts | n | flagged @ 1 % | flagged @ 0.1 % |",
        "| --- | --- | --- | --- |",
        "| attack (one benchmark wrapper each) | {} | {} | {} |".format(
            r["accounts"]["attack"][0], _f(r["accounts"]["attack"][1], 2), _f(r["accounts"]["attack"][2], 2)
        ),
        *[
            f"| near-miss: {_cell(r['accounts']['near_templates'][w], 70)} | {n} | {_f(a, 2)} | {_f(b, 2)} |"
            for w, (n, a, b) in r["accounts"]["near"].items()
        ],
        "",
        "### Probability on plain benign prompts",
        "",
        "| prompts | n | median | 99th percentile | 99.9th percentile | max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, scores in r["percentiles"].items():
        lines.append(
            f"| {name} | {len(scores)} | {_f(float(np.median(scores)), 5)} | "
            f"{_f(float(np.percentile(scores, 99)), 4)} | {_f(float(np.percentile(scores, 99.9)), 4)} | "
            f"{_f(float(np.max(scores)), 4)} |"
        )
    lines += [
        "",
        "Percentiles interpolate linearly; with about 500-1,000 prompts the 99.9th percentile rests on the top one "
        "or two.",
        "",
        "The five held-out plain prompts that score highest (truncated):",
        "",
        "| probability | prompt |",
        "| --- | --- |",
        *[f"| {_f(p, 4)} | {_cell(t, 110)} |" for p, t in r["top_plain"]],
        "",
        "## Reading these numbers",
        "",
        "- What the head learns is mostly *lexical and topical*: the MiniLM embedding mixes the payload's topic "
        "with the wrapper's ask, and a linear head cannot separate them fully. Prompts *about* chain of thought, "
        "grading or agents (the about_reasoning near-misses) score like prompts that *ask for* them, and a "
        "plain prompt whose own content is a reasoning or grading task can score high.",
        "- Cross-validation shows the price of unseen wordings: in-distribution CV is the ceiling, holding "
        "out a style costs a little, holding out a whole intent costs a lot (the four intents share less than "
        "their wordings suggest).",
        "- Not blind: we wrote our wordings after reading `_COT_WRAPPERS` (avoiding their text: a test checks "
        "that no training text contains any of their fragments), and we saw the held-out results of two earlier "
        "versions of this dataset before adding the system-prompt, format, agent and about_reasoning near-miss "
        "families and more wordings per intent (the first version measured AUC 0.875 on the wrappers against "
        "easier held-out negatives: these changes did not raise it). The L2 weight was chosen by "
        "cross-validation only.",
        "- The account-level table mixes prompts of unrelated users into each plain account, which makes plain "
        "accounts more alike than real ones; it shows the direction, not an operating point.",
        "- The positives and near-misses are our own wordings around real payloads, not logged campaign traffic; "
        "the held-out `_COT_WRAPPERS` rows are the closest thing to an independent test, and they were written "
        "by another hand for the benchmark.",
        "- Near-misses are hard by design: a student asking for an explanation and an extraction script asking "
        "for a worked solution can be worded alike. A per-prompt score is one signal; an account's rate of "
        "high scores across many prompts is what should raise a flag.",
        "- The embedding truncates at 256 tokens: an instruction placed after a very long payload is not seen.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-head", type=Path, default=DEFAULT_HEAD_PATH)
    parser.add_argument("--out-report", type=Path, default=DEFAULT_REPORT)
    args = parser.parse_args(argv)
    run(args.out_head, args.out_report)


if __name__ == "__main__":
    main()
