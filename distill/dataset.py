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
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import (
    StageError,
    check_output_dir,
    clear_manifest,
    json_files,
    read_json_object,
    require_manifest,
    run_lock,
    usable_cores,
    write_json,
    write_jsonl,
    write_manifest,
)
from .pages import PAGE_KIND
from .synth import load_synthetic, text_sha256
from .tasks import Task, load_task

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


# Up to this many rows every new input is compared with every kept one (exact, quadratic); above it
# near-duplicate candidates come from MinHash LSH and are then checked with the same ratio.
EXACT_DEDUPE_MAX = 2000
_SHINGLE = 5          # bytes per shingle of the normalised text (characters, for ASCII)
_NUM_PERM = 64        # MinHash permutations
# LSH bands: a pair is proposed when all _ROWS values of one of _BANDS bands agree, with probability
# 1 - (1 - J^_ROWS)^_BANDS at Jaccard J: 0.60 at J=0.5, 0.98 at 0.7, 0.999 at 0.8 (datasketch's
# optimum for threshold 0.5 and 64 permutations). A pair at fuzz.ratio >= 95 is at ~0.6 or more unless
# its edits are spread every few characters (BENCHMARKS.md measures recall).
_BANDS, _ROWS = 14, 4
# A band value that more than this many *kept* posts share is skipped: kept posts are not
# near-duplicates of one another, so such a value comes from boilerplate a whole style shares (its
# minimum shingles all lie in the frame), and it would propose every post of that style for every
# new one -- the checks would grow with N squared (100k stage-benchmark posts: 288 s in 04, 2/3 of
# it sorting candidates). A near-duplicate pair also agrees on bands of its own text.
_BUCKET_MAX = 64
_MIN_JACCARD = 0.5    # a candidate whose estimated Jaccard is below this is not compared (a pair at ratio >= 95
# keeps ~85% of its shingles: J ~0.75; with 64 permutations the estimate is within +-0.06 of it)
_MAX_COMPARE = 64     # candidates compared per input, most similar (estimated Jaccard) first
_U64 = np.uint64


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise: spreads packed shingles over all 64 bits."""
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


_PERM_RNG = np.random.default_rng(1)  # fixed: signatures must not change between runs
_PERM_A = _PERM_RNG.integers(1, 2**63, size=_NUM_PERM, dtype=np.uint64) | _U64(1)  # odd multipliers
_PERM_B = _PERM_RNG.integers(0, 2**63, size=_NUM_PERM, dtype=np.uint64)


def minhash_values(norm: str) -> np.ndarray:
    """The text's MinHash over its set of 5-byte shingles, as ``_NUM_PERM`` 32-bit values.

    Vectorised (datasketch's own ``update`` hashes shingle by shingle in Python: 3-5 ms per post,
    minutes at 100k): each shingle's 5 bytes packed into one integer (exact: no two shingles
    share it), mixed, then one multiply-add hash per permutation (64-bit wraparound, top 32
    bits) and the minimum over the set."""
    data = np.frombuffer(norm.encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if len(data) < _SHINGLE:
        data = np.pad(data, (0, _SHINGLE - len(data)))
    n = len(data) - _SHINGLE + 1
    packed = np.zeros(n, dtype=np.uint64)
    for j in range(_SHINGLE):
        packed = (packed << _U64(8)) | data[j:j + n]
    # repeated shingles cannot change a minimum, and shifting after the minimum is the same as before it
    hashed = np.multiply.outer(_PERM_A, _mix64(packed))  # (permutations, shingles), wraps around
    hashed += _PERM_B[:, None]
    return (hashed.min(axis=1) >> _U64(32)).astype(np.uint32)


# From this many rows the texts are normalised and signed in worker processes, one per core (at 100k
# rows 13.8 s -> 7.2 s on 2 cores; threads gain nothing: the regexes hold the GIL).
PARALLEL_SIGN_MIN = 20_000
_SIGN_CHUNK = 2000


def _norm(text: str) -> str:
    from .fields import normalize_text

    return normalize_text(text)[:3000]


def _sign_chunk(texts: list[str]) -> tuple[list[str], np.ndarray]:
    norms = [_norm(t) for t in texts]
    return norms, np.stack([minhash_values(n) for n in norms])


def sign_texts(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(normalised texts, their MinHash signatures), in worker processes for large inputs."""
    chunks = [texts[i:i + _SIGN_CHUNK] for i in range(0, len(texts), _SIGN_CHUNK)]
    workers = min(8, usable_cores())
    parts = None
    if len(texts) >= PARALLEL_SIGN_MIN and workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(_sign_chunk, chunks))
        except (OSError, BrokenProcessPool) as exc:  # no processes here (a sandbox, a limit): do it in this one
            print(f"04: near-duplicate signatures in this process only ({type(exc).__name__}: {exc})", file=sys.stderr)
    if parts is None:
        parts = [_sign_chunk(c) for c in chunks]
    return [n for ns, _ in parts for n in ns], np.concatenate([sg for _, sg in parts])


def band_keys(sigs: np.ndarray) -> list[list[int]]:
    """Per signature, one 64-bit key per LSH band (its _ROWS values mixed into one integer; two
    different bands' values giving the same key only adds a candidate the ratio check then refuses)."""
    bands = sigs[:, :_BANDS * _ROWS].reshape(len(sigs), _BANDS, _ROWS).astype(np.uint64)
    key = np.zeros(bands.shape[:2], dtype=np.uint64)
    for j in range(_ROWS):
        key = _mix64(key ^ bands[:, :, j])
    return key.tolist()


class BandIndex:
    """MinHash LSH over the kept posts: per band, its value -> the kept posts that have it; values
    shared by more than :data:`_BUCKET_MAX` kept posts are not proposed (see there)."""

    def __init__(self) -> None:
        self.tables: list[dict[int, list[int]]] = [{} for _ in range(_BANDS)]

    def query(self, keys: list[int]) -> set[int]:
        out: set[int] = set()
        for table, key in zip(self.tables, keys):
            bucket = table.get(key)
            if bucket is not None and len(bucket) <= _BUCKET_MAX:
                out.update(bucket)
        return out

    def insert(self, i: int, keys: list[int]) -> None:
        for table, key in zip(self.tables, keys):
            bucket = table.setdefault(key, [])
            if len(bucket) <= _BUCKET_MAX:  # past the limit it is never read again: stop growing it
                bucket.append(i)


def _closest(candidates: set[int], kept_sigs: np.ndarray, sig: np.ndarray) -> list[int]:
    """LSH's candidates (kept indices) worth a rapidfuzz check: estimated Jaccard >= _MIN_JACCARD,
    the _MAX_COMPARE most similar, most similar first (ties by index: the same run, the same drops)."""
    if not candidates:
        return []
    idx = np.fromiter(sorted(candidates), dtype=np.int64, count=len(candidates))
    est = np.count_nonzero(kept_sigs[idx] == sig, axis=1)
    order = np.argsort(-est, kind="stable")[:_MAX_COMPARE]
    return [int(i) for i in idx[order[est[order] >= _MIN_JACCARD * _NUM_PERM]]]


def dedupe(rows: list[dict], threshold: float = 95.0) -> tuple[list[dict], list[dict]]:
    """Drop inputs whose text is a near-duplicate (rapidfuzz ratio >= threshold) of an earlier one.

    Exact text repeats always go. Up to :data:`EXACT_DEDUPE_MAX` rows every input is compared with
    every kept one; above it (a 100k-item run would take hours that way) the comparison is made
    only with the kept inputs MinHash LSH proposes (:class:`BandIndex`; character 5-gram shingles),
    at most the :data:`_MAX_COMPARE` most similar of them, so the work per input stays bounded however
    alike the posts are. Every input dropped is within the ratio of a kept one, as with the exact rule
    (which kept post that is can differ, so the two rules may keep different sets); a pair LSH does
    not propose is kept — BENCHMARKS.md measures how many near-duplicates that misses."""
    from rapidfuzz import fuzz, process

    index = sigs = kept_sigs = keys = None
    if len(rows) > EXACT_DEDUPE_MAX:
        index = BandIndex()
        norms, sigs = sign_texts([r["text"] for r in rows])
        keys = band_keys(sigs)
        kept_sigs = np.empty_like(sigs)  # row i: the signature of kept_texts[i]
    else:
        norms = [_norm(r["text"]) for r in rows]
    keep, dropped = [], []
    seen_norm: dict[str, str] = {}
    kept_texts: list[str] = []
    for k, (r, norm) in enumerate(zip(rows, norms)):
        if norm in seen_norm:
            dropped.append(r | {"duplicate_of": seen_norm[norm]})
            continue
        if index is not None:
            candidates = _closest(index.query(keys[k]), kept_sigs, sigs[k])
            best = process.extractOne(norm, [kept_texts[i] for i in candidates], scorer=fuzz.ratio,
                                      score_cutoff=threshold) if candidates else None
            best = None if best is None else (best[0], best[1], candidates[best[2]])
        elif kept_texts:
            best = process.extractOne(norm, kept_texts, scorer=fuzz.ratio, score_cutoff=threshold)
        else:
            best = None
        if best is not None:
            dropped.append(r | {"duplicate_of": keep[best[2]]["id"]})
            continue
        seen_norm[norm] = r["id"]
        if index is not None:
            kept_sigs[len(kept_texts)] = sigs[k]
            index.insert(len(kept_texts), keys[k])
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


@dataclass
class LabelScan:
    """What 03's folder holds for 04: the labels to train on and a count of everything else."""
    trained: list[dict] = field(default_factory=list)       # accepted (and unverified when asked), in id order
    verdicts: Counter = field(default_factory=lambda: Counter({v: 0 for v in ("accepted", "rejected", "unverified",
                                                                                "failed")}))
    reasons: Counter = field(default_factory=Counter)       # why the others were not trained on
    orphans: int = 0                                         # labels whose input is not in 02's folder
    stale: list[dict] = field(default_factory=list)         # labels of an older text of their input


def scan_labels(labeled_dir: Path, synthetic: dict[str, dict], include_unverified: bool = False) -> LabelScan:
    """Pair 03's labels with 02's inputs (by id, checked by the text's hash: :func:`is_stale`).

    Only labels checked against their source record are trained on, unless ``include_unverified``.
    A label without an id cannot be paired: an error naming the file."""
    trained_verdicts = ("accepted", "unverified") if include_unverified else ("accepted",)
    scan = LabelScan()
    for p in json_files(labeled_dir, skip=("manifest.json",)):
        lab = read_json_object(p)
        if "verdict" not in lab:
            continue
        if "id" not in lab:
            raise StageError(f"{p}: a label without an \"id\": cannot pair it with its input; move it out of "
                             f"the folder or re-run 03_label_with_reasoning.py")
        if lab["id"] not in synthetic:
            scan.orphans += 1
            continue
        if is_stale(lab, synthetic[lab["id"]]):
            scan.stale.append(lab)
            continue
        scan.verdicts[lab["verdict"]] += 1
        if lab["verdict"] in trained_verdicts:
            scan.trained.append(lab)
        else:
            for r in str(lab.get("reason", "")).split(","):
                scan.reasons[r] += 1
    return scan


def make_splits(task: Task, rows: list[dict], fractions: dict[str, float], seed: int,
                abstention_share: float = 1.0) -> tuple[dict[str, list[dict]], str, dict]:
    """Rows into leak-free splits (:func:`assign_splits`, stratified by the task's ``stratify`` key),
    then the train split's share of empty/partial-label styles capped (:func:`cap_share`).
    Returns the splits, the key they are stratified by and the abstention report for stats.json."""
    key = task.extra.get("stratify", "style")
    assignment = assign_splits(rows, fractions, seed, key=key)
    splits = {s: [r for r in rows if assignment[group_of(r)] == s] for s in SPLITS}
    capped = abstention_styles(task)
    before = sum(r["style"] in capped for r in splits["train"])
    splits["train"], capped_out = cap_share(splits["train"], capped, abstention_share, seed)
    train = splits["train"]
    return splits, key, {"styles": sorted(capped), "cap": abstention_share, "train_rows_before_cap": before,
                    "dropped_by_cap": len(capped_out), "dropped_ids": [r["id"] for r in capped_out],
                    "train_share": round(sum(r["style"] in capped for r in train) / len(train), 4) if train else None,
                    "by_split": {s: sum(r["style"] in capped for r in v) for s, v in splits.items()}}


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


def run_stage(args) -> int:
    """Stage 04 (``04_build_dataset.py``): pair accepted labels with their inputs (refusing stale pairs),
    dedupe, split without leaks, write the chat rows and stats.json, the manifest last."""
    fractions = parse_split(args.split)
    require_manifest(args.synthetic_dir, "02_generate_synthetic.py")
    lm = require_manifest(args.labeled_dir, "03_label_with_reasoning.py")
    check_output_dir(args.output_dir, "04_build_dataset", [args.synthetic_dir, args.labeled_dir])
    task = load_task(args.task or lm.get("task", "recipe"))
    synthetic = {r["id"]: r for r in load_synthetic(args.synthetic_dir)}

    scan = scan_labels(args.labeled_dir, synthetic, args.include_unverified)
    verdicts, reasons, stale = scan.verdicts, scan.reasons, scan.stale
    if stale and not args.skip_stale:
        raise StageError(stale_message(stale, args.labeled_dir))
    if stale:
        print(f"04: --skip-stale: left out {len(stale)} stale label(s) ({list_ids([lab['id'] for lab in stale])}); "
              f"re-run 03 to label their inputs' current text")
    if not scan.trained:
        hint = (" (pass --include-unverified to train on the unverified ones)"
                if verdicts["unverified"] and not args.include_unverified else "")
        raise StageError(f"no accepted labels in {args.labeled_dir} ({dict(verdicts)}; not accepted by reason: "
                         f"{dict(reasons)}): check the teacher with 03 --calibrate{hint}")
    accepted = scan.trained[:args.limit] if args.limit else scan.trained

    rows = build_rows(task, synthetic, accepted, keep_reasoning=args.reasoning == "keep")
    rows, dropped = dedupe(rows, args.dedupe_threshold)
    splits, key, abstention = make_splits(task, rows, fractions, args.seed, args.abstention_share)
    capped = set(abstention["styles"])

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer  # only for --tokenizer: seconds to import
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)

    out = args.output_dir
    with run_lock(out):
        clear_manifest(out)
        for s in SPLITS:
            write_jsonl(out / f"{s}.jsonl", splits[s])
        stats = {
            "counts": {s: len(v) for s, v in splits.items()},
            "source_records": {s: len({r["source_id"] for r in v}) for s, v in splits.items()},
            # sites of page inputs per split (grouped: no host is in two splits)
            "page_hosts": {s: len({group_of(r) for r in v if group_of(r).startswith("host:")})
                           for s, v in splits.items()},
            "by_style": {s: dict(Counter(r["style"] for r in v)) for s, v in splits.items()},
            "stratified_by": key,
            "labels": dict(verdicts),
            "trained_on": dict(Counter(r["verdict"] for v in splits.values() for r in v)),
            "not_accepted_by_reason": dict(reasons.most_common()),
            "near_duplicates_dropped": len(dropped),
            # rows of styles with empty fields (empty or partial labels) and --abstention-share's cap
            "abstention": abstention,
            "labels_without_input": scan.orphans,
            "stale_labels_skipped": len(stale),
            "with_reasoning": sum(r["has_reasoning"] for r in rows),
            "length": {s: length_stats(v, tokenizer) for s, v in splits.items() if v},
        }
        write_json(out / "stats.json", stats)
        write_jsonl(out / "dropped_duplicates.jsonl",
                    [{"id": r["id"], "duplicate_of": r["duplicate_of"]} for r in dropped])
        write_manifest(out, "04_build_dataset", vars(args), stats["counts"], task=task.name,
                       system_prompt=task.student_system_prompt, user_template=task.student_user_template,
                       reasoning=args.reasoning, stats=stats)
    n_unverified = stats["trained_on"].get("unverified", 0)
    unverified = f" (of them {n_unverified} unverified)" if n_unverified else ""
    print(f"04: {sum(stats['counts'].values())} examples{unverified} from {len(accepted)} labels "
          f"({len(dropped)} near-duplicates dropped; labels: {dict(verdicts)})")
    for s in SPLITS:
        hosts = f"  {stats['page_hosts'][s]:>3} sites" if any(stats["page_hosts"].values()) else ""
        print(f"  {s:<5} {len(splits[s]):>5} examples  {stats['source_records'][s]:>4} records{hosts}  "
              f"styles {stats['by_style'][s]}  length {stats['length'].get(s, {})}")
    if capped:
        cap = (f", capped at {args.abstention_share:g}: {abstention['dropped_by_cap']} dropped"
               if args.abstention_share < 1 else "")
        print(f"  empty/partial labels ({', '.join(sorted(capped))}): {abstention['by_split']}{cap}")
    if reasons:
        print(f"not accepted, by reason: {dict(reasons.most_common())}")
    print(f"wrote {out}")
    return 0
