"""07's reports: loading and comparing runs, the side-by-side tables, plots and report.md.

Reports: ``eval.json`` (per example and aggregate), ``report.md`` (side-by-side table,
by style and host, adversarial kinds, worst examples), ``fields.png``, ``styles.png`` and ``review.html``
(:mod:`distill.review`).
:func:`format_table` renders the comparison for a terminal.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from .io import StageError, atomic_write_text, read_json, write_json
from .scoring import SCORERS

EVAL_FILE = "eval.json"


# ============================================================== loading and comparing runs

def load_eval(run_dir: str | Path) -> dict:
    p = Path(run_dir)
    if p.suffix != ".json":
        p = p / EVAL_FILE
    if not p.is_file():
        raise StageError(f"{p} not found: run 07_evaluate.py --model ... --output-dir {Path(run_dir)} first")
    ev = read_json(p)
    if not isinstance(ev, dict) or "aggregate" not in ev:
        raise StageError(f"{p} is not an eval.json written by 07_evaluate.py")
    return ev


def compare(dirs: Iterable[str | Path]) -> list[dict]:
    """Load earlier runs for one table; they must be of one task."""
    evals = [load_eval(d) for d in dirs]
    tasks = {e.get("task") for e in evals}
    if len(tasks) > 1:
        raise StageError(f"cannot compare runs of different tasks: {sorted(map(str, tasks))}")
    names = Counter(e.get("name") for e in evals)
    for e, d in zip(evals, dirs):
        if names[e.get("name")] > 1:   # two runs named alike: tell them apart by folder
            e["name"] = f"{e.get('name')} ({Path(d).name})"
    return evals


# ============================================================== tables

def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num3(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _num2(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _int(v: int | None) -> str:
    return "n/a" if v is None else str(v)


def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table_rows(evals: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) rows shared by the terminal and the Markdown table."""
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fmt, *path: str, src: str = "aggregate", always: bool = False) -> None:
        cells = [fmt(_get(e.get(src), *path)) for e in evals]
        if always or any(c != "n/a" for c in cells):
            rows.append((label, cells))

    rows.append(("examples", [str(_get(e, "aggregate", "n") or 0) for e in evals]))
    add("  scored (reference has a value)", _int, "n_scored")
    add("JSON valid", _pct, "json_valid")
    add("schema valid", _pct, "schema_valid")
    add("overall score", _num3, "score")
    fields: dict[str, str] = {}
    for e in evals:
        for name, fa in (_get(e, "aggregate", "fields") or {}).items():
            fields.setdefault(name, fa["method"])
    fmts = {"pct": _pct, "num3": _num3, "num2": _num2, "int": _int}
    for name, method in fields.items():
        # a field's first row stays when no run has a mean (n=0 everywhere): its outcome rows follow it
        scorer = SCORERS.get(method)   # an eval.json of an older version may name a method no longer here
        rows_of = scorer.rows(name, evals) if scorer else [(f"{name} ({method}) match", "pct", ("exact",), True)]
        for label, fmt, path, always in rows_of:
            add(label, fmts[fmt], "fields", name, *path, always=always)
        # what the means above are over, and what happened where the reference is empty
        add("  n (reference has a value)", _int, "fields", name, "n")
        add("  omitted", _pct, "fields", name, "missing_rate")
        add("  invented (reference empty)", _pct, "fields", name, "spurious_rate")
        add("  abstained (reference empty)", _pct, "fields", name, "abstention_rate")
    add("priced items on menu", _pct, "price_check", "priced_rate")
    add("total = menu price", _pct, "price_check", "consistent_rate")
    add("total = reference", _pct, "price_check", "correct_rate")
    add("hallucinated items", _pct, "hallucination_rate")
    add("missing fields", _pct, "missing_rate")
    add("invented fields", _pct, "spurious_rate")
    add("abstained fields", _pct, "abstention_rate")
    add("adversarial passed", _pct, "pass_rate", src="adversarial")
    kinds = sorted({k for e in evals for k in (_get(e, "adversarial", "by_kind") or {})})
    for k in kinds:
        add(f"  {k}", _pct, "by_kind", k, "pass_rate", src="adversarial")
    add("stopped (loop guard / limit)", _pct, "stopped_rate")
    add("  went on past the loop", _pct, "resumed_rate")
    add("latency p50 (s)", _num2, "latency_s", "p50")
    unit = "pages" if evals and all(e.get("split") == "pages" for e in evals) else "inputs"
    add(f"{unit}/min (generation wall time)", _num2, "per_min", src="throughput")
    return rows


def format_table(evals: list[dict], width: int = 14) -> str:
    """The comparison as a fixed-width text table for a terminal (one column per run)."""
    rows = table_rows(evals)
    names = [str(e.get("name") or "?") for e in evals]
    w = max([width] + [len(n) + 1 for n in names])
    label_w = max([len("metric")] + [len(r[0]) for r in rows]) + 2
    lines = ["metric".ljust(label_w) + "".join(n.rjust(w) for n in names),
             "-" * (label_w + w * len(names))]
    lines += [label.ljust(label_w) + "".join(c.rjust(w) for c in cells) for label, cells in rows]
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def markdown_table(evals: list[dict]) -> str:
    return _md_table(["metric"] + [str(e.get("name")) for e in evals],
                     [[label.replace("  ", "&nbsp;&nbsp;")] + cells for label, cells in table_rows(evals)])


# ============================================================== plots

def _styles(evals: list[dict]) -> list[str]:
    return sorted({s for e in evals for s in (_get(e, "aggregate", "by_style") or {})})


def _grouped_bars(path: Path, groups: list[str], evals: list[dict], value, title: str, ylabel: str) -> Path | None:
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    n = max(1, len(evals))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, n / 2)), 4.2))
    for i, e in enumerate(evals):
        # a mean over nothing (n=0) gets no bar, only "n/a": a 0 would read as a measured score
        pts = [(j + (i - (n - 1) / 2) * width, value(e, g)) for j, g in enumerate(groups)]
        ax.bar([x for x, v in pts if v is not None], [v for _, v in pts if v is not None], width,
               label=str(e.get("name")))
        for x, v in pts:
            if v is None:
                ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_fields(evals: list[dict], path: Path) -> Path | None:
    """Per-field score (F1 for lists, similarity for text, match rate for scalars) by model."""
    fields = list(dict.fromkeys(f for e in evals for f in (_get(e, "aggregate", "fields") or {})))
    return _grouped_bars(Path(path), fields, evals, lambda e, f: _get(e, "aggregate", "fields", f, "score"),
                         "Per-field score by model (where the reference has a value; F1 for lists)", "score (0-1)")


def plot_styles(evals: list[dict], path: Path) -> Path | None:
    """Overall score per input style by model."""
    return _grouped_bars(Path(path), _styles(evals), evals,
                         lambda e, s: _get(e, "aggregate", "by_style", s, "score"),
                         "Overall score by input style", "score (0-1)")


# ============================================================== Markdown report

def _short(v: Any, n: int = 90) -> str:
    """One line (whitespace folded, so Markdown lists stay intact), at most n characters."""
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    s = " ".join(s.split()).replace("`", "'")
    return s if len(s) <= n else s[:n - 1] + "…"


def worst_examples(ev: dict, n: int = 5) -> list[dict]:
    """The n lowest-scoring examples that are not perfect."""
    exs = [e for e in ev.get("examples", []) if e.get("score") is not None and e["score"] < 1.0]
    return sorted(exs, key=lambda e: (e["score"], e.get("id", "")))[:n]


def _worst_md(ev: dict, n: int) -> list[str]:
    lines = [f"### Worst examples: {ev.get('name')}", ""]
    worst = worst_examples(ev, n)
    n_scored = sum(e.get("score") is not None for e in ev.get("examples", []))
    if not n_scored:
        return lines + ["(no example scored: no reference has a value)", ""]
    if not worst:
        return lines + [f"(none: all {n_scored} scored examples scored 1.0)", ""]
    for e in worst:
        lines.append(f"- **{e.get('id')}** ({e.get('style') or '?'}): score {e['score']:.3f}"
                     + ("" if e["json_valid"] else f", no valid JSON ({e.get('parse_error')})")
                     + (f", missing {', '.join(e['missing'])}" if e["missing"] else "")
                     + (f", invented {', '.join(e['spurious'])}" if e["spurious"] else ""))
        if not e["json_valid"]:
            lines.append(f"  - answer: `{_short(e.get('answer') or '', 160)}`")
        else:
            bad = sorted(((k, f) for k, f in e["fields"].items()
                          if f.get("outcome") == "hallucinated" or (f["score"] is not None and f["score"] < 1.0)),
                         key=lambda kv: kv[1]["score"] or 0.0)
            for k, f in bad[:3]:
                lines.append(f"  - `{k}` {'invented' if f['score'] is None else format(f['score'], '.2f')}: "
                             f"got `{_short(f.get('pred'))}`, expected `{_short(f.get('ref'))}`")
        if e.get("host"):   # a saved page: the whole of what the model saw matters, head and tail
            lines.append(f"  - page `{e.get('page')}` ({e['host']}), reference from its {e.get('reference_from')}; "
                         f"the model read {len(e.get('text') or '')} characters: {_excerpt(e.get('text') or '', 400)}")
        elif e.get("text"):
            lines.append(f"  - input: {_short(e['text'], 160)}")
    return lines + [""]


def _excerpt(text: str, n: int) -> str:
    """One line of at most about n characters: the head and the tail of ``text`` when it is longer."""
    s = " ".join(text.split()).replace("`", "'")
    if len(s) <= n:
        return f"`{s}`"
    half = n // 2
    return f"`{s[:half]}` … `{s[-half:]}`"


def _pages_md(evals: list[dict]) -> list[str]:
    """Where the references of page runs came from, and the pages skipped (no reference), by name."""
    lines: list[str] = []
    for e in evals:
        pg = e.get("pages")
        if not pg:
            continue
        refs = pg.get("references") or {}
        skipped = pg.get("skipped") or []
        lines += [f"### Pages: {e.get('name')}", "",
                  f"{pg.get('pages_read')} of the {pg.get('pages_found')} pages in `{pg.get('pages_dir')}` read; "
                  f"references from a sibling .json: {refs.get('json', 0)}, from the page's own markup: "
                  f"{refs.get('markup', 0)}; skipped (no reference, not scored): {len(skipped)}."]
        if pg.get("input_errors"):
            lines.append("Pages with no readable text (no request sent, scored as no answer): "
                         + ", ".join(f"{k} {v}" for k, v in pg["input_errors"].items()) + ".")
        lines.append("")
        lines += [f"- skipped `{sk['path']}`: {sk['reason']}" for sk in skipped]
        if skipped:
            lines.append("")
    return (["## Pages", ""] + lines) if lines else []


def _style_cell(a: dict | None) -> str:
    """Overall score (n scored of n), then the field outcome rates."""
    if not a:
        return "n/a"
    n, n_scored = a.get("n") or 0, a.get("n_scored", a.get("n") or 0)
    return (f"{_num3(a.get('score'))} (n={n_scored} of {n}); omitted {_pct(a.get('missing_rate'))}, "
            f"invented {_pct(a.get('spurious_rate'))}, abstained {_pct(a.get('abstention_rate'))}")


def write_report(out_dir: str | Path, evals: list[dict], title: str = "Evaluation", n_worst: int = 5) -> Path:
    """report.md + fields.png + styles.png in out_dir for one or more runs; returns report.md's path
    (07 writes review.html beside it: distill.review.write_eval_review)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields_png = plot_fields(evals, out_dir / "fields.png")
    styles_png = plot_styles(evals, out_dir / "styles.png")
    lines = [f"# {title}", ""]
    lines.append(_md_table(["run", "model", "task", "split", "examples", "finished"],
                           [[str(e.get("name")), f"`{e.get('model')}`" + (f" ({e['model_id']})" if e.get("model_id") else ""),
                             str(e.get("task")), str(e.get("split")), str(_get(e, "aggregate", "n")),
                             str(e.get("finished_at", ""))] for e in evals]))
    lines += ["", "## Scores", "", markdown_table(evals), ""]
    lines += ["Scores: F1 for list fields (fuzzy one-to-one item matching), similarity for text fields, "
              "match rate for times (minutes) and numbers, each a mean over the examples whose reference has "
              "a value (n); an empty prediction there scores 0 (omitted). Where the reference is empty there is "
              "nothing to match: the model abstains (gives nothing, the right answer) or invents a value, each "
              "a rate of the fields whose reference is empty, never averaged into a field's score. The overall "
              "score of an example is the weighted mean over its fields whose reference has a value, with "
              "each invented field adding its weight to the denominator as a 0; an answer that is not valid "
              "JSON scores 0 on every field. Missing fields = omitted; invented fields = hallucinated fields; "
              "hallucinated items = items of grounded fields not found in the input text.", ""]
    if fields_png:
        lines += [f"![per-field scores]({fields_png.name})", ""]
    styles = _styles(evals)
    if styles:
        lines += ["## By input style", "",
                  _md_table(["style"] + [str(e.get("name")) for e in evals],
                            [[s] + [_style_cell(_get(e, "aggregate", "by_style", s)) for e in evals]
                             for s in styles]), ""]
        if styles_png:
            lines += [f"![scores by style]({styles_png.name})", ""]
    hosts = sorted({h for e in evals for h in (_get(e, "aggregate", "by_host") or {})})
    if hosts:
        lines += ["## By host", "",
                  _md_table(["host"] + [str(e.get("name")) for e in evals],
                            [[h] + [_style_cell(_get(e, "aggregate", "by_host", h)) for e in evals]
                             for h in hosts]), ""]
    lines += _pages_md(evals)
    kinds = sorted({k for e in evals for k in (_get(e, "adversarial", "by_kind") or {})})
    if kinds:
        lines += ["## Adversarial cases", "",
                  _md_table(["kind"] + [str(e.get("name")) for e in evals],
                            [[k] + [(f"{b['passed']}/{b['n']}" if (b := _get(e, "adversarial", "by_kind", k)) else "n/a")
                                    for e in evals] for k in kinds]), ""]
        for e in evals:
            failed = [c for c in (_get(e, "adversarial", "cases") or []) if not c["passed"]]
            if failed:
                lines.append(f"Failed by {e.get('name')}:")
                for c in failed:
                    why = "; ".join(f"`{k}` {ch.get('why', '')}, got `{_short(ch['got'], 60)}`"
                                    for k, ch in (c.get("expect") or {}).items() if not ch["passed"])
                    lines.append(f"- {c['id']} ({c['kind']}): "
                                 + (f"stopped ({c['stopped']}) before it finished" if c.get("stopped")
                                    else why or (f"no valid JSON ({c.get('parse_error')})" if not c["json_valid"]
                                            else f"invented {', '.join(c.get('spurious') or [])}"
                                            if c.get("score") is None else f"score {c['score']:.2f}")))
                lines.append("")
    lines += ["## Worst examples", ""]
    for e in evals:
        lines += _worst_md(e, n_worst)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def write_eval(out_dir: str | Path, ev: dict) -> Path:
    return write_json(Path(out_dir) / EVAL_FILE, ev)
