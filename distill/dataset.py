"""Stage 04 logic: accepted labels -> chat-format train/val/test splits without leaks.

Leak-free means every input written from one source record lands in the same
split (grouped by ``source_id``), and near-duplicate inputs are dropped before
splitting. Inputs of saved pages (01 --from-pages) are grouped by their site
instead: every page of one host, with every synthetic variant written from those
pages, lands in one split, so the test split scores sites the student never saw
(one site's pages share a template, a voice and often recipes). Splits are
stratified by style (or the task's ``stratify:`` key) and seeded.
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from typing import Any

from .io import StageError
from .pages import PAGE_KIND
from .synth import text_sha256
from .tasks import Task

SPLITS = ("train", "val", "test")


def parse_split(spec: str) -> dict[str, float]:
    """'0.8,0.1,0.1' -> {'train': .8, 'val': .1, 'test': .1}; two parts mean train,test."""
    try:
        parts = [float(x) for x in spec.split(",")]
    except ValueError as exc:
        raise StageError(f"--split {spec!r}: expected numbers like 0.8,0.1,0.1") from exc
    if len(parts) == 1:
        parts = [parts[0], 0.0, round(1 - parts[0], 10)]
    elif len(parts) == 2:
        parts = [parts[0], 0.0, parts[1]]
    if len(parts) != 3 or any(p < 0 for p in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
        raise StageError(f"--split {spec!r}: give train,val,test fractions that sum to 1 (e.g. 0.8,0.1,0.1)")
    return dict(zip(SPLITS, parts))


def assistant_content(label: dict, reasoning: str | None, keep_reasoning: bool) -> str:
    """The assistant turn: '<think>reasoning</think>' + JSON, or the JSON alone
    (read back by :func:`distill.answers.drop_reasoning_block`)."""
    answer = json.dumps(label, ensure_ascii=False)
    if keep_reasoning and reasoning and reasoning.strip():
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}"
    return answer


def dedupe(rows: list[dict], threshold: float = 95.0) -> tuple[list[dict], list[dict]]:
    """Drop inputs whose text is a near-duplicate (rapidfuzz ratio >= threshold) of an earlier one."""
    from rapidfuzz import fuzz, process

    from .fields import normalize_text

    keep, dropped = [], []
    seen_norm: dict[str, str] = {}
    kept_texts: list[str] = []
    for r in rows:
        norm = normalize_text(r["text"])[:3000]
        if norm in seen_norm:
            dropped.append(r | {"duplicate_of": seen_norm[norm]})
            continue
        if kept_texts:
            best = process.extractOne(norm, kept_texts, scorer=fuzz.ratio, score_cutoff=threshold)
            if best is not None:
                dropped.append(r | {"duplicate_of": keep[best[2]]["id"]})
                continue
        seen_norm[norm] = r["id"]
        kept_texts.append(norm)
        keep.append(r)
    return keep, dropped


def stratum(row: dict, key: str) -> str:
    for src in (row, row.get("reference") or {}, row.get("source") or {}):
        if isinstance(src, dict) and key in src and src[key] is not None:
            return str(src[key])
    return "?"


def group_of(row: dict) -> str:
    """The unit no two splits share: ``host:<site>`` for an input of a saved page (its record is a
    page record), else the input's source record id."""
    src = row.get("source") or {}
    if isinstance(src, dict) and src.get("kind") == PAGE_KIND and src.get("host"):
        return f"host:{src['host']}"
    return str(row["source_id"])


def assign_splits(rows: list[dict], fractions: dict[str, float], seed: int, key: str = "style") -> dict[str, str]:
    """group -> split (:func:`group_of`: the source record, or the site of page inputs), stratified by ``key``.

    Groups are ordered stratum by stratum (shuffled within each, seeded) and
    dealt out one at a time to the split furthest below its target share, so
    every stratum is spread over the splits in proportion and the totals match
    the fractions to within one group.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[group_of(r)].append(r)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for gid, members in sorted(groups.items()):
        by_stratum[Counter(stratum(m, key) for m in members).most_common(1)[0][0]].append(gid)
    rng = random.Random(seed)
    order: list[str] = []
    for s_name in sorted(by_stratum):
        gids = by_stratum[s_name]
        rng.shuffle(gids)
        order.extend(gids)
    assigned = {s: 0 for s in SPLITS}
    assignment: dict[str, str] = {}
    for i, gid in enumerate(order, 1):
        split = max(SPLITS, key=lambda s: (fractions[s] * i - assigned[s], fractions[s]))
        assigned[split] += 1
        assignment[gid] = split
    return assignment


def abstention_styles(task: Task) -> set[str]:
    """The styles whose inputs must leave fields empty (a style's ``empty:``): their right label is
    empty (a text with no recipe) or partial (a post without times), as 04 --abstention-share counts them."""
    return {s.name for s in task.styles if s.empty}


def cap_share(rows: list[dict], capped: set[str], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): ``rows`` with at most ``share`` of the kept rows in a ``capped`` style.

    The other rows are all kept; of the capped rows a seeded random choice is kept, as many as
    ``share`` allows (``share`` 1: all of them, 0: none), in their original order.
    """
    inside = [r for r in rows if r.get("style") in capped]
    n_other = len(rows) - len(inside)
    if share >= 1 or not inside:
        return list(rows), []
    # k / (n_other + k) <= share  <=>  k <= share * n_other / (1 - share)
    k = min(len(inside), math.floor(share * n_other / (1 - share) + 1e-9))
    keep_ids = {id(r) for r in random.Random(seed).sample(inside, k)}
    kept = [r for r in rows if r.get("style") not in capped or id(r) in keep_ids]
    return kept, [r for r in inside if id(r) not in keep_ids]


def is_stale(label: dict, syn: dict) -> bool:
    """Was ``label`` made from another text than ``syn`` holds now?

    02 re-run with other settings rewrites an input under the same id; its old label
    must not be paired with the new text. A label without ``text_sha256`` (written
    before labels stored it) cannot be shown to match, so it counts as stale too.
    """
    return label.get("text_sha256") != text_sha256(syn["text"])


def list_ids(ids: list[str], n_show: int = 5) -> str:
    """'a, b, c, d, e and 7 more'."""
    return ", ".join(ids[:n_show]) + (f" and {len(ids) - n_show} more" if len(ids) > n_show else "")


def stale_message(stale: list[dict], labeled_dir) -> str:
    """One line: which labels are stale, why, and the fix."""
    changed = [lab["id"] for lab in stale if lab.get("text_sha256")]
    unhashed = [lab["id"] for lab in stale if not lab.get("text_sha256")]
    parts = []
    if changed:
        parts.append(f"{len(changed)} label(s) in {labeled_dir} were made from another text than their input has "
                     f"now (02 rewrote it): {list_ids(changed)}")
    if unhashed:
        parts.append(f"{len(unhashed)} label(s) carry no text hash (written by an older 03): {list_ids(unhashed)}")
    does = [w for w, xs in (("re-labels the changed inputs", changed),
                            ("adds the hash to a label of an unchanged input without a request", unhashed)) if xs]
    return ("; ".join(parts) + f". Re-run 03_label_with_reasoning.py on the same input dir (it {' and '.join(does)}), "
            "or pass --skip-stale to build without them")


def build_rows(task: Task, synthetic: dict[str, dict], labels: list[dict], keep_reasoning: bool) -> list[dict]:
    rows = []
    for lab in labels:
        syn = synthetic[lab["id"]]
        msgs = task.student_messages(syn["text"]) + [
            {"role": "assistant", "content": assistant_content(lab["output"], lab.get("reasoning"), keep_reasoning)}]
        rows.append({"messages": msgs, "id": lab["id"], "source_id": syn["source_id"], "style": syn.get("style"),
                     "task": task.name, "reference": lab["output"], "text": syn["text"],
                     "source": syn.get("source"), "has_reasoning": bool(lab.get("reasoning")),
                     "verdict": lab["verdict"]})
    return rows


def percentiles(values: list[int], ps=(50, 90, 95, 99, 100)) -> dict[str, int]:
    if not values:
        return {}
    v = sorted(values)
    return {f"p{p}": v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))] for p in ps}


def length_stats(rows: list[dict], tokenizer: Any = None) -> dict:
    """Per-row lengths of the full chat: real tokens with a tokenizer, else chars/4 (labelled)."""
    if tokenizer is not None:
        lens = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True)) for r in rows]
        unit = "tokens"
    else:
        lens = [math.ceil(sum(len(m["content"]) for m in r["messages"]) / 4) for r in rows]
        unit = "approx_tokens_chars_div_4"
    return {"unit": unit, **percentiles(lens)}
