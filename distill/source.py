"""Source datasets: download through kagglehub and clean raw files into records.

Two halves:

* :func:`download_kaggle` wraps ``kagglehub.dataset_download`` and turns the
  failures a user can fix (no credentials, no network, unknown dataset) into a
  one-line :class:`~distill.io.StageError`.
* The parsers (:data:`PARSERS`) turn a raw file into a list of JSON-serialisable
  records, each with a stable ``id``, plus a report of everything they dropped
  or could not parse. A task folder names its parser; :func:`load_records`
  accepts either a finished 01 output directory or a raw file.

kagglehub facts this module relies on (checked against kagglehub 1.0.x source):

* An *unpinned* handle (``owner/slug``) always asks the Kaggle API for the
  current version first, so it needs the network even when a copy is cached.
  A *pinned* handle (``owner/slug/versions/N``) is served from the cache with
  no request at all.
* Cache layout under ``$KAGGLEHUB_CACHE`` (default ``~/.cache/kagglehub``):
  ``datasets/<owner>/<slug>/versions/<N>/<files>`` plus the completion marker
  ``datasets/<owner>/<slug>/<N>.complete``; without the marker the cached copy
  is ignored.
* Credentials kagglehub reads itself: ``KAGGLE_API_TOKEN`` (or
  ``~/.kaggle/access_token``), ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, or
  ``kaggle.json`` in ``$KAGGLE_CONFIG_DIR`` / ``~/.kaggle``. We add a
  ``kaggle.json`` in the project root by pointing ``KAGGLE_CONFIG_DIR`` at it.
* No network shows up as a bare ``requests.exceptions.ConnectionError``; API
  refusals as ``kagglehub.exceptions.KaggleApiHTTPError`` (a
  ``requests.HTTPError``) carrying the HTTP status.
"""
from __future__ import annotations

import csv
import functools
import io
import math
import os
import re
import shutil
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from distill.fields import human_minutes
from distill.io import (
    MANIFEST,
    PROJECT_ROOT,
    StageError,
    parse_jsonl,
    read_jsonl,
    require_manifest,
    stable_hash,
)

DEFAULT_KAGGLE_DATASET = "nguyentuongquang/all-recipes"

# owner/slug or owner/slug/versions/N, Kaggle slugs are lowercase-ish but we only
# reject what kagglehub itself would reject with a bare ValueError.
_HANDLE_RE = re.compile(r"^(?P<owner>[^/\s]+)/(?P<slug>[^/\s]+)(?:/versions/(?P<version>\d+))?$")

CREDENTIALS_HELP = (
    "set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or put kaggle.json "
    "in the project root or ~/.kaggle/ (create it at https://www.kaggle.com/settings/api)"
)


# --------------------------------------------------------------------------- download


def parse_handle(handle: str) -> tuple[str, str, int | None]:
    """Split ``owner/slug[/versions/N]``; a malformed handle is a StageError."""
    m = _HANDLE_RE.match(handle.strip())
    if not m or (m.group("version") is not None and int(m.group("version")) < 1):
        raise StageError(f"bad Kaggle dataset handle {handle!r}: expected OWNER/SLUG or OWNER/SLUG/versions/N")
    version = m.group("version")
    return m.group("owner"), m.group("slug"), int(version) if version else None


def kagglehub_cache_dir() -> Path:
    from kagglehub.config import get_cache_folder

    return Path(get_cache_folder())


def cached_versions(owner: str, slug: str) -> list[int]:
    """Complete versions of a dataset in the kagglehub cache (marker + folder present)."""
    base = kagglehub_cache_dir() / "datasets" / owner / slug
    versions = []
    if base.is_dir():
        for marker in base.glob("*.complete"):
            if marker.stem.isdigit() and (base / "versions" / marker.stem).exists():
                versions.append(int(marker.stem))
    return sorted(versions)


@contextmanager
def _credentials_env(project_root: Path) -> Iterator[None]:
    """Let kagglehub find a ``kaggle.json`` in the project root.

    kagglehub only looks in ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle``; an explicit
    ``KAGGLE_CONFIG_DIR`` wins, otherwise a project-root file wins over ``~/.kaggle``.
    """
    local = Path(project_root) / "kaggle.json"
    if "KAGGLE_CONFIG_DIR" in os.environ or not local.is_file():
        yield
        return
    os.environ["KAGGLE_CONFIG_DIR"] = str(local.parent)
    try:
        yield
    finally:
        os.environ.pop("KAGGLE_CONFIG_DIR", None)


def credentials_source() -> str | None:
    """Describe where kagglehub will take credentials from (None = anonymous).

    Call inside :func:`_credentials_env`. Uses kagglehub's own lookup so we agree
    with it on precedence; a malformed kaggle.json is a StageError.
    """
    from kagglehub.config import get_kaggle_credentials

    try:
        creds = get_kaggle_credentials()
    except ValueError as exc:  # kagglehub: invalid JSON / missing username or key
        raise StageError(f"{exc}; fix the file or {CREDENTIALS_HELP}") from exc
    if creds is None:
        return None
    if creds.api_key:
        return "KAGGLE_API_TOKEN" if os.environ.get("KAGGLE_API_TOKEN") else "access_token file"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    return "kaggle.json"


def download_kaggle(
    handle: str = DEFAULT_KAGGLE_DATASET,
    out_dir: str | os.PathLike | None = None,
    *,
    project_root: str | os.PathLike | None = None,
) -> dict:
    """Fetch a Kaggle dataset with kagglehub and copy its files into ``out_dir``.

    Returns ``{"handle", "version", "cache_path", "files": [Path, ...],
    "credentials"}``. ``files`` are the copies in ``out_dir`` (or the cached files
    when ``out_dir`` is None).

    A pinned version already complete in the kagglehub cache is served without
    credentials or network (kagglehub itself does not need them then); anything
    else needs credentials. kagglehub itself would try a public dataset
    anonymously; we require credentials so a missing setup is reported up front,
    in one line that says what to set, instead of as whatever the API answers an
    anonymous caller.
    """
    owner, slug, version = parse_handle(handle)
    handle = f"{owner}/{slug}" + (f"/versions/{version}" if version else "")
    import kagglehub
    import requests
    from kagglehub.exceptions import DataCorruptionError, UnauthenticatedError

    with _credentials_env(Path(project_root if project_root is not None else PROJECT_ROOT)):
        cred = credentials_source()
        served_from_cache = version is not None and version in cached_versions(owner, slug)
        if cred is None and not served_from_cache:
            raise StageError(f"no Kaggle credentials found to download {handle}: {CREDENTIALS_HELP}; or use --from-file")
        try:
            path = kagglehub.dataset_download(handle)
        except requests.exceptions.ConnectionError as exc:
            hint = "check the network, or import a local copy with --from-file"
            have = cached_versions(owner, slug)
            if version is None and have:
                # kagglehub asks for the latest version before it looks in the cache.
                hint = f"cached versions {have} can be used offline with --dataset {owner}/{slug}/versions/{have[-1]}"
            raise StageError(f"cannot reach Kaggle to fetch {handle} ({type(exc).__name__}); {hint}") from exc
        except requests.exceptions.Timeout as exc:
            raise StageError(f"Kaggle timed out fetching {handle}; retry, or import a local copy with --from-file") from exc
        except requests.exceptions.HTTPError as exc:  # includes kagglehub's KaggleApiHTTPError
            status = exc.response.status_code if exc.response is not None else None
            if status == 404:
                raise StageError(f"Kaggle dataset {handle} not found (HTTP 404): check OWNER/SLUG and the version") from exc
            if status in (401, 403):
                raise StageError(
                    f"Kaggle refused {handle} (HTTP {status}, credentials from {cred or 'nowhere'}): "
                    f"check the credentials, and accept the dataset's terms on kaggle.com if it asks"
                ) from exc
            raise StageError(f"Kaggle API error fetching {handle} (HTTP {status}): {str(exc).splitlines()[0]}") from exc
        except UnauthenticatedError as exc:
            raise StageError(f"Kaggle needs credentials for {handle}: {CREDENTIALS_HELP}") from exc
        except DataCorruptionError as exc:
            raise StageError(f"download of {handle} failed its checksum; re-run to fetch it again") from exc

    cache_path = Path(path)
    m = re.search(r"[/\\]versions[/\\](\d+)(?:[/\\]|$)", str(cache_path))
    resolved_version = int(m.group(1)) if m else version
    src_files = [cache_path] if cache_path.is_file() else sorted(p for p in cache_path.rglob("*") if p.is_file())
    files = src_files
    if out_dir is not None:
        out = Path(out_dir)
        files = []
        for src in src_files:
            rel = src.name if cache_path.is_file() else src.relative_to(cache_path)
            files.append(copy_file_atomic(src, out / rel))
    return {
        "handle": f"{owner}/{slug}",
        "version": resolved_version,
        "cache_path": str(cache_path),
        "files": files,
        "credentials": cred or "none (served from cache)",
    }


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file so a crash never leaves a partial copy under the final name."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def pick_source_file(files: list[Path], parser: str) -> Path:
    """Choose the file a parser should read from a downloaded dataset."""
    suffixes = {"jsonl": (".jsonl", ".json")}.get(parser, (".csv",))
    matches = [Path(f) for f in files if Path(f).suffix.lower() in suffixes]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(Path(f).name for f in files) or "no files"
    if not matches:
        raise StageError(f"the dataset has no {'/'.join(suffixes)} file for parser {parser!r} (found: {names})")
    raise StageError(
        f"the dataset has several {'/'.join(suffixes)} files ({names}); pass the one you want with --from-file"
    )


# --------------------------------------------------------------------------- text helpers

_ESCAPE_RE = re.compile(r"<U\+([0-9A-Fa-f]{4,6})>")


# errors="surrogateescape" turns each byte that is not valid UTF-8 into one of these.
_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")


def decode_bytes(data: bytes) -> tuple[str, str, int]:
    """Decode a raw file: UTF-8 first, cp1252 only when the bytes are clearly not UTF-8.

    Returns ``(text, encoding, bad_bytes)``. A UTF-8 file with a few bad bytes (a
    truncated character, one stray cp1252 byte) stays UTF-8: each bad byte becomes
    U+FFFD and is counted, because decoding the whole file as cp1252 instead would turn
    every correct accent into mojibake. "Clearly not UTF-8" means more bytes are invalid
    as UTF-8 than there are valid multi-byte characters: in a cp1252 file (the public
    copies of the recipes CSV) nearly every byte above 0x7F is invalid UTF-8 and valid
    sequences only occur by chance. Five byte values are undefined in cp1252 and become
    U+FFFD (counted) rather than failing the whole file.
    """
    text = data.decode("utf-8-sig", errors="surrogateescape")
    bad = len(_ESCAPED_BYTE_RE.findall(text))  # one escape per byte that is not valid UTF-8
    if bad == 0:
        return text, "utf-8", 0
    multibyte = len(text) - len(text.encode("ascii", errors="ignore")) - bad
    if multibyte >= bad:
        return _ESCAPED_BYTE_RE.sub("\ufffd", text), "utf-8", bad
    text = data.decode("cp1252", errors="replace")
    return text, "cp1252", text.count("\ufffd")


def describe_encoding(report: dict) -> str:
    """'utf-8', 'utf-8, 1 bad byte replaced by U+FFFD' or 'cp1252 (not UTF-8)' for summaries."""
    enc, bad = report.get("encoding"), report.get("undecodable_bytes") or 0
    out = f"{enc} (not UTF-8)" if enc == "cp1252" else str(enc)
    if bad:
        out += f", {bad} bad byte{'s' if bad != 1 else ''} replaced by U+FFFD"
    return out


def unescape_codepoints(text: str) -> str:
    """Turn R-style ``<U+2153>`` escapes into the character itself (⅓)."""

    def sub(m: re.Match) -> str:
        cp = int(m.group(1), 16)
        return chr(cp) if cp <= sys.maxunicode else m.group(0)

    return _ESCAPE_RE.sub(sub, text)


def clean_text(value: str | None) -> str | None:
    """Unescape, turn non-breaking spaces into spaces, collapse whitespace; '' and NA -> None."""
    if value is None:
        return None
    value = unescape_codepoints(value).replace("\xa0", " ")
    value = re.sub(r"\s+", " ", value).strip()
    if value == "" or value.upper() in {"NA", "N/A", "NAN", "NULL", "NONE"}:
        return None
    return value


def parse_int(value: str | None) -> int | None:
    """'1,234' -> 1234, '12.0' -> 12, 'NA'/'' -> None; anything else -> None."""
    value = clean_text(value)
    if value is None:
        return None
    value = value.replace(",", "")
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f == int(f) else None


def parse_rating(value: str | None) -> float | None:
    """Star rating; 0 and NA both mean 'unrated' in this dataset -> None."""
    value = clean_text(value)
    if value is None:
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return f if f > 0 else None


def parse_duration(text: str | None) -> int | None:
    """'1 hr 20 mins' -> 80, '1 day 2 hrs' -> 1560, '45 mins' -> 45; unparseable -> None.

    Every number must carry a known unit, otherwise the whole value is rejected (a half-understood
    time is worse than none): distill.fields.human_minutes, strict.
    """
    text = clean_text(text)
    if text is None:
        return None
    minutes = human_minutes(text, strict=True)
    # Half-up rounding: '30 secs' is 1 minute, not banker's-rounded to 0.
    return None if minutes is None else int(math.floor(minutes + 0.5))


_PROCESS_KEY_RE = re.compile(r"(?:^|,)\s*(prep|cook|additional|total|servings|yield)\s*:", re.IGNORECASE)


def parse_process(text: str | None) -> tuple[dict, list[str]]:
    """Split the ``process`` column into typed fields.

    ``prep: 30 mins,cook: 24 mins,total: 54 mins,Servings: 10,Yield: 10 burritos``.
    Only the known keys start a new field, so commas inside the yield
    (``Yield: 1 9x13-inch pan, 24 bars``) stay in the yield. Returns the fields
    and a list of problems (for the report; the record is kept).
    """
    out: dict[str, Any] = {
        "prep_minutes": None, "cook_minutes": None, "additional_minutes": None,
        "total_minutes": None, "servings": None, "yield": None,
    }
    problems: list[str] = []
    text = clean_text(text)
    if text is None:
        return out, problems
    matches = list(_PROCESS_KEY_RE.finditer(text))
    if not matches or text[: matches[0].start()].strip(" ,"):
        problems.append("process_unrecognised_text")
    for i, m in enumerate(matches):
        key = m.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[m.end():end].strip(" ,")
        if key in ("prep", "cook", "additional", "total"):
            minutes = parse_duration(value)
            if minutes is None and value:
                problems.append(f"unparsed_{key}_time")
            out[f"{key}_minutes"] = minutes
        elif key == "servings":
            m_int = re.match(r"^\s*(\d+)\s*$", value)
            if m_int:
                out["servings"] = int(m_int.group(1))
            elif value:
                problems.append("unparsed_servings")
        else:
            out["yield"] = value or None
    return out, problems


def readable_category(group: str | None) -> str | None:
    """Last part of a dotted group path, readable: 'main-dish.pork-chops' -> 'Pork Chops'."""
    if not group:
        return None
    last = group.rstrip(".").split(".")[-1]
    words = [w for w in re.split(r"[-_\s]+", last) if w]
    small = {"and", "or", "of", "with", "the", "a", "an", "in", "on", "for", "to"}
    out = [w if (i and w.lower() in small) else w[:1].upper() + w[1:] for i, w in enumerate(words)]
    return " ".join(out) or None


def split_ingredients(text: str | None) -> list[str]:
    """The dataset joins ingredients with ' + '. An ingredient that itself says
    '2 cups + 2 tablespoons' is split too; the CSV carries no way to tell them apart."""
    text = clean_text(text)
    if text is None:
        return []
    return [p.strip() for p in text.split(" + ") if p.strip()]


# --------------------------------------------------------------------------- parsers


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]], dict]:
    data = Path(path).read_bytes()
    text, encoding, replaced = decode_bytes(data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise StageError(f"{path}: empty file, expected a CSV header") from None
    except csv.Error as exc:
        raise StageError(f"{path}: not a readable CSV ({exc})") from exc
    try:
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise StageError(f"{path}: CSV error at line {reader.line_num} ({exc})") from exc
    header = [h.strip().lstrip("\ufeff") for h in header]
    return header, rows, {"encoding": encoding, "undecodable_bytes": replaced, "bytes": len(data)}


def _require_columns(path: Path, header: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise StageError(
            f"{Path(path).name}: missing column(s) {', '.join(missing)}; found columns: {', '.join(header) or '(none)'}"
        )


def recipe_id(name: str, ingredients: list[str]) -> str:
    """A recipe's id from its content: name and ingredients, compared without case or spacing.

    The category path is left out on purpose: the site lists one recipe under several
    categories, and an id per category would put copies of it into different splits.
    """
    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", s).strip().casefold()

    return "r-" + stable_hash(norm(name), sorted(norm(i) for i in ingredients), length=12)


ALLRECIPES_COLUMNS = ["group", "name", "rating", "n_rater", "n_reviewer", "summary", "process", "ingredient"]


def clean_allrecipes_csv(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """Clean the Kaggle 'all-recipes' CSV into records (see module docstring).

    Returns ``(records, report)``. Every input row ends up counted in the report:
    written, an exact duplicate, a repeat of an already-seen recipe id, merged into
    the record of the same recipe listed under another group, or unparseable with a
    reason.
    """
    path = Path(path)
    header, rows, info = _read_csv_rows(path)
    _require_columns(path, header, ALLRECIPES_COLUMNS)
    idx = {name: header.index(name) for name in ALLRECIPES_COLUMNS}

    seen_rows: set[tuple] = set()
    seen_ids: dict[str, dict] = {}
    unparseable: Counter = Counter()
    field_problems: Counter = Counter()
    escapes = 0
    duplicates = 0
    duplicate_ids = 0
    merged_groups = 0
    records: list[dict] = []

    for row in rows:
        key = tuple(cell.strip() for cell in row)
        if key in seen_rows:
            duplicates += 1
            continue
        seen_rows.add(key)
        if len(row) != len(header):
            unparseable["wrong_field_count"] += 1
            continue
        escapes += sum(len(_ESCAPE_RE.findall(cell)) for cell in row)
        get = lambda col: row[idx[col]]  # noqa: E731, B023 - used within this iteration only
        name = clean_text(get("name"))
        group = clean_text(get("group"))
        ingredient_text = clean_text(get("ingredient"))
        ingredients = split_ingredients(ingredient_text)
        if name is None:
            unparseable["missing_name"] += 1
            continue
        if not ingredients:
            unparseable["missing_ingredients"] += 1
            continue
        rid = recipe_id(name, ingredients)
        if rid in seen_ids:
            first = seen_ids[rid]
            if group not in first["groups"]:
                # The same recipe listed under another category: one record, every category kept,
                # so it cannot land in two splits under two ids.
                first["groups"].append(group)
                first["categories"].append(readable_category(group))
                merged_groups += 1
            else:
                # Same recipe scraped twice with e.g. a different rating count: keep the first.
                duplicate_ids += 1
            continue
        times, problems = parse_process(get("process"))
        field_problems.update(problems)
        records.append({
            "id": rid,
            "name": name,
            "group": group,
            "category": readable_category(group),
            "groups": [group],
            "categories": [readable_category(group)],
            "rating": parse_rating(get("rating")),
            "n_rater": parse_int(get("n_rater")),
            "n_reviewer": parse_int(get("n_reviewer")),
            "summary": clean_text(get("summary")),
            **times,
            "ingredients": ingredients,
        })
        seen_ids[rid] = records[-1]

    report = {
        "parser": "allrecipes_csv",
        "source_file": path.name,
        **info,
        "rows_read": len(rows),
        "duplicates_dropped": duplicates,
        "duplicate_ids_dropped": duplicate_ids,
        "group_rows_merged": merged_groups,
        "unparseable": dict(sorted(unparseable.items())),
        "records": len(records),
        "unicode_escapes_converted": escapes,
        "field_problems": dict(sorted(field_problems.items())),
        "unrated": sum(1 for r in records if r["rating"] is None),
    }
    return records, report


def _generic_id(row: dict) -> str:
    if row.get("id") not in (None, ""):
        return str(row["id"])
    return "r-" + stable_hash({k: v for k, v in row.items() if k != "id"}, length=12)


def _dedupe_generic(rows: list[dict], parser: str, path: Path, info: dict) -> tuple[list[dict], dict]:
    seen_ids: set[str] = set()
    seen_rows: set[str] = set()
    duplicates = duplicate_ids = 0
    records = []
    for row in rows:
        fingerprint = stable_hash(row, length=32)
        if fingerprint in seen_rows:
            duplicates += 1
            continue
        seen_rows.add(fingerprint)
        rec = {"id": _generic_id(row), **{k: v for k, v in row.items() if k != "id"}}
        if rec["id"] in seen_ids:
            duplicate_ids += 1
            continue
        seen_ids.add(rec["id"])
        records.append(rec)
    report = {
        "parser": parser,
        "source_file": path.name,
        **info,
        "rows_read": len(rows),
        "duplicates_dropped": duplicates,
        "duplicate_ids_dropped": duplicate_ids,
        "unparseable": {},
        "records": len(records),
    }
    return records, report


def clean_generic_csv(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """Any CSV with a header: one record per row, cells as cleaned strings (or None).

    ``id`` is the ``id`` column when present, else a hash of the row.
    """
    path = Path(path)
    header, rows, info = _read_csv_rows(path)
    if len(set(header)) != len(header) or any(not h for h in header):
        raise StageError(f"{path.name}: header has empty or repeated column names: {', '.join(header)}")
    records, bad = [], 0
    for row in rows:
        if len(row) != len(header):
            bad += 1
            continue
        records.append({h: clean_text(v) for h, v in zip(header, row)})
    recs, report = _dedupe_generic(records, "csv", path, info)
    report["rows_read"] += bad
    if bad:
        report["unparseable"] = {"wrong_field_count": bad}
    return recs, report


def clean_jsonl(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """A JSONL file of objects, kept as they are (plus an ``id`` if missing).

    JSON ought to be UTF-8, but exports from older tools are often Latin-1/cp1252: such a
    file is decoded like a CSV (:func:`decode_bytes`) and the encoding used is reported,
    rather than refused, since every character still has one right reading.
    """
    path = Path(path)
    data = path.read_bytes()
    text, encoding, bad = decode_bytes(data)
    rows = parse_jsonl(text, path)
    return _dedupe_generic(rows, "jsonl", path, {"encoding": encoding, "undecodable_bytes": bad, "bytes": len(data)})


PARSERS: dict[str, Callable[[str | os.PathLike], tuple[list[dict], dict]]] = {
    "allrecipes_csv": clean_allrecipes_csv,
    "csv": clean_generic_csv,
    "jsonl": clean_jsonl,
}


# --- generators: "parsers" that make records from a spec file in the task folder ---
# (issue 5) menu_orders draws seeded reference orders from a menu (distill/menu.py).
def _menu_orders(path: str | os.PathLike) -> tuple[list[dict], dict]:
    from distill.menu import generate_orders

    return generate_orders(path)


PARSERS["menu_orders"] = _menu_orders

# The fields of each parser's records, so the task loader can refuse a ``verify.source``
# or ``record_fields`` entry the records do not have (a typo would switch a check off).
# None: the generic parsers keep a file's own columns/keys, read by record_fields().
RECORD_FIELDS: dict[str, frozenset[str] | None] = {
    "allrecipes_csv": frozenset({"id", "name", "group", "category", "groups", "categories", "rating", "n_rater", "n_reviewer", "summary",
                                 "prep_minutes", "cook_minutes", "additional_minutes", "total_minutes",
                                 "servings", "yield", "ingredients"}),
    "csv": None,
    "jsonl": None,
    "menu_orders": frozenset({"id", "order_lines", "items", "total_price", "currency", "n_items", "reference"}),
}


def record_fields(parser: str, path: str | os.PathLike | None = None) -> frozenset[str] | None:
    """The fields a parser's records have; for csv/jsonl those of the file at ``path``
    (None when there is no file to read: the records come from elsewhere)."""
    declared = RECORD_FIELDS.get(parser)
    if declared is not None:
        return declared
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return _file_fields(parser, str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _file_fields(parser: str, path: str, mtime_ns: int, size: int) -> frozenset[str]:
    # Cached by modification time: every stage loads its task, and the file is read whole.
    records, _ = PARSERS[parser](path)
    return frozenset({"id"}.union(*(r.keys() for r in records)))


def get_parser(name: str) -> Callable[[str | os.PathLike], tuple[list[dict], dict]]:
    try:
        return PARSERS[name]
    except KeyError:
        raise StageError(f"unknown source parser {name!r}; choose one of: {', '.join(PARSERS)}") from None


def load_records(path: str | os.PathLike, parser: str = "allrecipes_csv") -> tuple[list[dict], dict]:
    """Records from a finished 01 output directory (records.jsonl) or a raw file.

    A directory must carry 01's manifest (it is refused half-written); a file is
    cleaned with the named parser.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "records.jsonl").exists() and not (path / MANIFEST).exists():
            raise StageError(f"{path} is a directory without records.jsonl: point at a 01 output dir or a raw file")
        require_manifest(path, "01_download_dataset.py")
        records = read_jsonl(path / "records.jsonl")
        return records, {"parser": "records.jsonl", "source_file": str(path / "records.jsonl"),
                         "records": len(records)}
    if not path.exists():
        raise StageError(f"{path} does not exist")
    return get_parser(parser)(path)


__all__ = [
    "DEFAULT_KAGGLE_DATASET",
    "PARSERS",
    "clean_allrecipes_csv",
    "clean_generic_csv",
    "clean_jsonl",
    "copy_file_atomic",
    "download_kaggle",
    "get_parser",
    "load_records",
    "parse_duration",
    "parse_handle",
    "parse_process",
    "pick_source_file",
    "record_fields",
]
