"""Stage 01 and distill.source: CSV cleaning, parsers, and the real kagglehub code paths.

kagglehub is never patched. Offline behaviour is tested against a cache folder built in
kagglehub's real layout; online behaviour against a local fake Kaggle API that kagglehub's
own HTTP client reaches through an HTTP proxy setting (KAGGLE_API_ENVIRONMENT=LOCALHOST
makes it call http://localhost/api/v1/..., HTTP_PROXY routes that to our server).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from distill.io import StageError, read_json, read_jsonl
from distill.source import (
    PARSERS,
    clean_allrecipes_csv,
    decode_bytes,
    download_kaggle,
    load_records,
    parse_duration,
    parse_handle,
    parse_process,
    readable_category,
    recipe_id,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tasks" / "recipe" / "sample.csv"
HEADER = ["group", "name", "rating", "n_rater", "n_reviewer", "summary", "process", "ingredient"]


def _load_stage01():
    spec = importlib.util.spec_from_file_location("stage01", ROOT / "01_download_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


stage01 = _load_stage01()


def write_csv(path: Path, rows: list[list[str]], encoding: str = "cp1252", header=HEADER) -> Path:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_kaggle_credentials(monkeypatch, tmp_path):
    """No credentials anywhere kagglehub looks (env is cleared by conftest)."""
    empty = tmp_path / "no-kaggle-config"
    empty.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(empty))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # kagglesdk reads ~/.kaggle/* at call time
    return tmp_path / "empty-project"


@pytest.fixture
def no_network(monkeypatch):
    """Any TCP connection attempt fails loudly: proves a code path stays offline."""
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError(f"test forbids network access (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def unreachable_kaggle(monkeypatch):
    """Requests to Kaggle go to a closed local port: fails at once, with or without internet."""
    port = closed_port()
    for var in ("NO_PROXY", "no_proxy", "KAGGLE_API_ENVIRONMENT", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")


def build_kagglehub_cache(cache: Path, owner: str, slug: str, version: int, files: dict[str, bytes]) -> Path:
    """kagglehub's cache layout: datasets/<owner>/<slug>/versions/<N>/... + datasets/<owner>/<slug>/<N>.complete"""
    base = cache / "datasets" / owner / slug
    vdir = base / "versions" / str(version)
    vdir.mkdir(parents=True)
    for name, data in files.items():
        (vdir / name).write_bytes(data)
    (base / f"{version}.complete").touch()
    return vdir


# --------------------------------------------------------------------------- field parsing


@pytest.mark.parametrize("text,minutes", [
    ("10 mins", 10), ("1 hr 20 mins", 80), ("2 hrs", 120), ("1 day 2 hrs", 1560),
    ("1 hr and 5 mins", 65), ("30 secs", 1), ("1 hour 1 minute", 61),
    ("", None), ("NA", None), ("about 5 mins", None), ("3 fortnights", None),
])
def test_parse_duration(text, minutes):
    assert parse_duration(text) == minutes


def test_parse_process_all_fields_and_yield_with_commas():
    fields, problems = parse_process(
        "prep: 15 mins,cook: 1 hr 20 mins,additional: 10 mins,total: 1 hr 45 mins,"
        "Servings: 24,Yield: 1 9x13-inch pan, 24 bars")
    assert fields == {"prep_minutes": 15, "cook_minutes": 80, "additional_minutes": 10, "total_minutes": 105,
                      "servings": 24, "yield": "1 9x13-inch pan, 24 bars"}
    assert problems == []


def test_parse_process_missing_parts_and_problems():
    fields, problems = parse_process("cook: 45 mins,total: soon,Servings: 4 to 6")
    assert fields == {"prep_minutes": None, "cook_minutes": 45, "additional_minutes": None, "total_minutes": None,
                      "servings": None, "yield": None}
    assert sorted(problems) == ["unparsed_servings", "unparsed_total_time"]
    assert parse_process("")[0]["total_minutes"] is None
    assert parse_process("whatever this is")[1] == ["process_unrecognised_text"]


def test_readable_category_and_handles():
    assert readable_category("desserts.cookies.chocolate-chip-cookies") == "Chocolate Chip Cookies"
    assert readable_category("appetizers-and-snacks.dips-and-spreads") == "Dips and Spreads"
    assert readable_category(None) is None
    assert parse_handle("nguyentuongquang/all-recipes") == ("nguyentuongquang", "all-recipes", None)
    assert parse_handle("a/b/versions/3") == ("a", "b", 3)
    for bad in ("all-recipes", "a/b/c", "a/b/versions/x", "a/b/versions/0"):
        with pytest.raises(StageError, match="bad Kaggle dataset handle"):
            parse_handle(bad)


def test_decode_bytes_prefers_utf8_then_cp1252():
    assert decode_bytes("Crème ⅓".encode("utf-8")) == ("Crème ⅓", "utf-8", 0)
    assert decode_bytes("Grandma’s crème".encode("cp1252")) == ("Grandma’s crème", "cp1252", 0)
    text, enc, replaced = decode_bytes(b"caf\xe9 \x81")  # 0x81 is undefined in cp1252
    assert (text, enc, replaced) == ("café \ufffd", "cp1252", 1)


def test_decode_bytes_keeps_utf8_with_a_few_bad_bytes():
    # One stray byte in a UTF-8 file: still UTF-8, the byte counted, no mojibake elsewhere.
    assert decode_bytes("Crème ⅓ ".encode("utf-8") + b"\xe9") == ("Crème ⅓ \ufffd", "utf-8", 1)
    # A character cut off after two of its three bytes: two bad bytes.
    assert decode_bytes("½ cup – ".encode("utf-8") + "–".encode("utf-8")[:2] + b" end") == \
        ("½ cup – \ufffd\ufffd end", "utf-8", 2)
    # A BOM is dropped, an encoded U+FFFD in the file is not counted as bad.
    assert decode_bytes(b"\xef\xbb\xbf" + "a\ufffdb".encode("utf-8")) == ("a\ufffdb", "utf-8", 0)
    # Mostly single high bytes with one accidental valid pair ("Ã©"): not UTF-8.
    text, enc, bad = decode_bytes("Ã© café crème brûlée".encode("cp1252"))
    assert (text, enc, bad) == ("Ã© café crème brûlée", "cp1252", 0)


# --------------------------------------------------------------------------- cleaning


MESSY = [
    # 0: cp1252 apostrophe + accent, <U+2153> escape, yield with a comma, hr/min times, thousands separator
    ["desserts.bar-cookies.brownies", "Nana’s Crème Brownies", "4.8", "1,204", "893",
     "Fudgy squares.\xa0 Keep them  covered.",
     "prep: 15 mins,cook: 1 hr 5 mins,total: 1 hr 20 mins,Servings: 16,Yield: 1 8x8-inch pan, 16 squares",
     "<U+2153> cup cocoa powder + ½ cup butter, melted + 2 large eggs"],
    # 1: unrated with 0, no prep, 'additional' time, day units
    ["desserts.pies.pumpkin-pies", "Pumpkin Pie", "0", "0", "0", "",
     "cook: 55 mins,additional: 1 day 2 hrs,total: 1 day 2 hrs 55 mins,Servings: 8,Yield: 1 pie",
     "1 (15 ounce) can pumpkin puree + 2 large eggs"],
    # 2: exact duplicate of row 0
    None,
    # 3: unrated with NA, NA counts, no cook
    ["salad.green-salads", "Green Salad", "NA", "NA", "NA", "NA",
     "prep: 10 mins,total: 10 mins,Servings: 2,Yield: 2 bowls",
     "4 cups lettuce + 1 tablespoon olive oil"],
    # 4: no name -> unparseable
    ["salad.green-salads", "", "4.0", "3", "1", "x", "prep: 5 mins", "1 apple"],
    # 5: no ingredients -> unparseable
    ["salad.green-salads", "Empty Salad", "4.0", "3", "1", "x", "prep: 5 mins", "NA"],
]
MESSY[2] = list(MESSY[0])

EXPECTED = [
    {"name": "Nana’s Crème Brownies", "group": "desserts.bar-cookies.brownies", "category": "Brownies",
     "groups": ["desserts.bar-cookies.brownies"], "categories": ["Brownies"],
     "rating": 4.8, "n_rater": 1204, "n_reviewer": 893, "summary": "Fudgy squares. Keep them covered.",
     "prep_minutes": 15, "cook_minutes": 65, "additional_minutes": None, "total_minutes": 80,
     "servings": 16, "yield": "1 8x8-inch pan, 16 squares",
     "ingredients": ["⅓ cup cocoa powder", "½ cup butter, melted", "2 large eggs"]},
    {"name": "Pumpkin Pie", "group": "desserts.pies.pumpkin-pies", "category": "Pumpkin Pies",
     "groups": ["desserts.pies.pumpkin-pies"], "categories": ["Pumpkin Pies"],
     "rating": None, "n_rater": 0, "n_reviewer": 0, "summary": None,
     "prep_minutes": None, "cook_minutes": 55, "additional_minutes": 1560, "total_minutes": 1615,
     "servings": 8, "yield": "1 pie", "ingredients": ["1 (15 ounce) can pumpkin puree", "2 large eggs"]},
    {"name": "Green Salad", "group": "salad.green-salads", "category": "Green Salads",
     "groups": ["salad.green-salads"], "categories": ["Green Salads"],
     "rating": None, "n_rater": None, "n_reviewer": None, "summary": None,
     "prep_minutes": 10, "cook_minutes": None, "additional_minutes": None, "total_minutes": 10,
     "servings": 2, "yield": "2 bowls", "ingredients": ["4 cups lettuce", "1 tablespoon olive oil"]},
]


def test_clean_messy_rows_exact(tmp_path):
    records, report = clean_allrecipes_csv(write_csv(tmp_path / "messy.csv", MESSY))
    assert [{k: v for k, v in r.items() if k != "id"} for r in records] == EXPECTED
    for r in records:
        assert r["id"].startswith("r-") and len(r["id"]) == 14 and int(r["id"][2:], 16) >= 0
    assert len({r["id"] for r in records}) == 3
    json.dumps(records)  # JSON-serialisable
    assert report["encoding"] == "cp1252"
    assert report["rows_read"] == 6
    assert report["duplicates_dropped"] == 1
    assert report["unparseable"] == {"missing_ingredients": 1, "missing_name": 1}
    assert report["records"] == 3
    assert report["unicode_escapes_converted"] == 1  # counted once: the duplicate row is dropped first
    assert report["unrated"] == 2
    assert report["rows_read"] == report["records"] + report["duplicates_dropped"] + sum(report["unparseable"].values())


def test_ids_are_stable_across_runs_and_encodings(tmp_path):
    a, _ = clean_allrecipes_csv(write_csv(tmp_path / "a.csv", MESSY, "cp1252"))
    b, report = clean_allrecipes_csv(write_csv(tmp_path / "b.csv", MESSY, "utf-8"))
    again, _ = clean_allrecipes_csv(tmp_path / "a.csv")
    assert report["encoding"] == "utf-8"
    assert [r["id"] for r in a] == [r["id"] for r in b] == [r["id"] for r in again]
    assert a == b


def test_same_recipe_with_other_counts_is_counted_not_duplicated(tmp_path):
    row = list(MESSY[3])
    later = list(row)
    later[3] = "7"  # re-scraped with another rater count: same name+group+ingredients
    records, report = clean_allrecipes_csv(write_csv(tmp_path / "r.csv", [row, later]))
    assert len(records) == 1 and records[0]["n_rater"] is None
    assert report["duplicate_ids_dropped"] == 1 and report["duplicates_dropped"] == 0


def test_same_recipe_under_two_groups_is_one_record_and_the_merge_is_counted(tmp_path, capsys):
    pie = list(MESSY[1])
    other_group = ["holidays.thanksgiving.pies"] + pie[1:]
    again = list(other_group)
    again[3] = "9"  # the second listing re-scraped with another rater count: a repeat, not a third group
    records, report = clean_allrecipes_csv(write_csv(tmp_path / "g.csv", [pie, MESSY[3], other_group, again]))
    assert [r["name"] for r in records] == ["Pumpkin Pie", "Green Salad"]
    assert records[0]["groups"] == ["desserts.pies.pumpkin-pies", "holidays.thanksgiving.pies"]
    assert records[0]["categories"] == ["Pumpkin Pies", "Pies"]
    assert records[0]["group"] == "desserts.pies.pumpkin-pies"  # the first listing's fields are kept
    assert report["group_rows_merged"] == 1 and report["duplicate_ids_dropped"] == 1
    assert report["rows_read"] == 4 == report["records"] + report["group_rows_merged"] + report["duplicate_ids_dropped"]

    out = tmp_path / "01"
    assert stage01.main(["--from-file", str(tmp_path / "g.csv"), "--output-dir", str(out)]) == 0
    assert "merged               1 rows listing a recipe already read under another group" in capsys.readouterr().out
    assert read_json(out / "clean_report.json")["group_rows_merged"] == 1
    assert read_json(out / "manifest.json")["counts"]["group_rows_merged"] == 1


def test_recipe_id_comes_from_name_and_ingredients_not_the_group(tmp_path):
    base = recipe_id("Pumpkin Pie", ["1 can pumpkin", "2 large eggs"])
    assert base == recipe_id("  pumpkin  PIE", ["2 large  eggs", "1 can Pumpkin"])  # case, spacing, order
    assert base != recipe_id("Pumpkin Pie", ["1 can pumpkin", "3 large eggs"])
    assert base != recipe_id("Pecan Pie", ["1 can pumpkin", "2 large eggs"])
    a, _ = clean_allrecipes_csv(write_csv(tmp_path / "a.csv", [MESSY[1]]))
    b, _ = clean_allrecipes_csv(write_csv(tmp_path / "b.csv", [["holidays.pies"] + MESSY[1][1:]]))
    assert a[0]["id"] == b[0]["id"] == recipe_id(a[0]["name"], a[0]["ingredients"])


def test_utf8_csv_with_one_bad_byte_is_read_as_utf8_and_the_byte_reported(tmp_path, capsys):
    path = write_csv(tmp_path / "u.csv", MESSY, "utf-8")
    data = path.read_bytes().replace(b"Green Salad", b"Green Sal\xe4d", 1)  # one Latin-1 byte slipped in
    path.write_bytes(data)
    records, report = clean_allrecipes_csv(path)
    assert report["encoding"] == "utf-8" and report["undecodable_bytes"] == 1
    names = [r["name"] for r in records]
    assert names == ["Nana’s Crème Brownies", "Pumpkin Pie", "Green Sal\ufffdd"]  # no mojibake ("NanaÃ¢â‚¬â„¢s")
    assert records[0]["ingredients"][0] == "⅓ cup cocoa powder"

    out = tmp_path / "01"
    assert stage01.main(["--from-file", str(path), "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "encoding utf-8, 1 bad byte replaced by U+FFFD" in captured.out
    assert "warning: u.csv: 1 byte(s) are not valid utf-8" in captured.err
    assert read_json(out / "clean_report.json")["undecodable_bytes"] == 1
    assert read_json(out / "manifest.json")["undecodable_bytes"] == 1


def test_cp1252_csv_is_reported_as_cp1252(tmp_path, capsys):
    out = tmp_path / "01"
    assert stage01.main(["--from-file", str(write_csv(tmp_path / "w.csv", MESSY, "cp1252")), "--output-dir",
                         str(out)]) == 0
    captured = capsys.readouterr()
    assert "encoding cp1252 (not UTF-8)" in captured.out and "warning" not in captured.err
    assert read_jsonl(out / "records.jsonl")[0]["name"] == "Nana’s Crème Brownies"
    assert read_json(out / "clean_report.json")["encoding"] == "cp1252"


def test_latin1_jsonl_is_decoded_as_cp1252_and_says_so(tmp_path, capsys):
    path = tmp_path / "old.jsonl"
    path.write_bytes('{"id": "a", "text": "Crème brûlée, ½ cup"}\n{"id": "b", "text": "plain"}\n'.encode("latin-1"))
    recs, rep = PARSERS["jsonl"](path)
    assert [r["text"] for r in recs] == ["Crème brûlée, ½ cup", "plain"]
    assert rep["encoding"] == "cp1252" and rep["undecodable_bytes"] == 0
    out = tmp_path / "01"
    assert stage01.main(["--from-file", str(path), "--parser", "jsonl", "--task", "article_scores",
                         "--output-dir", str(out)]) == 0
    assert "encoding cp1252 (not UTF-8)" in capsys.readouterr().out
    assert read_jsonl(out / "records.jsonl")[0]["text"] == "Crème brûlée, ½ cup"  # written back as UTF-8
    # The stages' own JSONL files are UTF-8: a file that is not is one clear error naming the line.
    with pytest.raises(StageError, match=r"old.jsonl:1: not UTF-8 \(byte 0xe8\)"):
        read_jsonl(path)


def test_missing_column_names_it_and_the_columns_found(tmp_path):
    header = [h for h in HEADER if h != "process"]
    path = write_csv(tmp_path / "bad.csv", [[c for i, c in enumerate(MESSY[0]) if i != 6]], header=header)
    with pytest.raises(StageError) as err:
        clean_allrecipes_csv(path)
    msg = str(err.value)
    assert "missing column(s) process" in msg and "found columns: group, name, rating" in msg
    assert "\n" not in msg


def test_wrong_field_count_is_counted(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text(",".join(HEADER) + "\nsalad,Only Three Cells,4.0\n", encoding="utf-8")
    records, report = clean_allrecipes_csv(path)
    assert records == [] and report["unparseable"] == {"wrong_field_count": 1}


def test_sample_csv_parses_cleanly():
    raw = SAMPLE.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the sample keeps the real file's cp1252 bytes
    assert b"<U+2153>" in raw
    records, report = clean_allrecipes_csv(SAMPLE)
    assert report["encoding"] == "cp1252"
    assert report["unparseable"] == {} and report["field_problems"] == {}
    assert report["duplicates_dropped"] >= 2 and report["records"] == len(records) >= 35
    assert report["unrated"] >= 2
    text = json.dumps(records, ensure_ascii=False)
    assert "<U+" not in text and "\ufffd" not in text and "⅓" in text and "’" in text
    assert all(r["ingredients"] and r["name"] for r in records)
    assert any("," in (r["yield"] or "") for r in records)
    assert any(r["prep_minutes"] is None for r in records) and any(r["cook_minutes"] is None for r in records)
    assert any(r["total_minutes"] and r["total_minutes"] >= 60 for r in records)
    assert len({r["id"] for r in records}) == len(records)


def test_generic_parsers_and_load_records(tmp_path):
    csv_path = tmp_path / "g.csv"
    csv_path.write_text("title,body\nA,one\nA,one\nB,NA\n", encoding="utf-8")
    recs, rep = PARSERS["csv"](csv_path)
    assert [(r["title"], r["body"]) for r in recs] == [("A", "one"), ("B", None)]
    assert rep["duplicates_dropped"] == 1 and all(r["id"].startswith("r-") for r in recs)

    jl = tmp_path / "g.jsonl"
    jl.write_text('{"id": "x1", "text": "a"}\n{"text": "b"}\n{"id": "x1", "text": "c"}\n', encoding="utf-8")
    recs, rep = load_records(jl, "jsonl")
    assert [r["text"] for r in recs] == ["a", "b"] and recs[0]["id"] == "x1"
    assert rep["duplicate_ids_dropped"] == 1

    with pytest.raises(StageError, match="unknown source parser"):
        load_records(jl, "parquet")
    with pytest.raises(StageError, match="does not exist"):
        load_records(tmp_path / "nope.csv", "csv")
    half = tmp_path / "half"
    half.mkdir()
    (half / "records.jsonl").write_text('{"id": "a"}\n', encoding="utf-8")
    with pytest.raises(StageError, match="did not finish"):
        load_records(half)


# --------------------------------------------------------------------------- stage 01 end to end


def test_01_from_file_end_to_end(tmp_path, capsys):
    out = tmp_path / "01"
    assert stage01.main(["--from-file", str(SAMPLE), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows read" in printed and "duplicates dropped" in printed and "encoding cp1252" in printed

    records = read_jsonl(out / "records.jsonl")
    expected, report = clean_allrecipes_csv(SAMPLE)
    assert records == expected
    assert (out / "raw" / "sample.csv").read_bytes() == SAMPLE.read_bytes()
    clean = read_json(out / "clean_report.json")
    assert clean["records_written"] == len(records) and clean["duplicates_dropped"] == report["duplicates_dropped"]
    manifest = read_json(out / "manifest.json")
    assert manifest["stage"] == "01_download_dataset" and manifest["task"] == "recipe"
    assert manifest["counts"]["records"] == len(records) and manifest["source"]["kind"] == "file"
    assert len(manifest["source"]["sha256"]) == 64

    # downstream reads the directory
    loaded, _ = load_records(out)
    assert loaded == records

    # re-run: idempotent, and --limit keeps the first N
    assert stage01.main(["--from-file", str(SAMPLE), "--output-dir", str(out), "--limit", "5"]) == 0
    assert read_jsonl(out / "records.jsonl") == expected[:5]
    assert read_json(out / "manifest.json")["counts"]["records"] == 5


def test_01_sample_flag_and_stale_raw_files(tmp_path):
    out = tmp_path / "01"
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "old.csv").write_text("stale", encoding="utf-8")
    assert stage01.main(["--sample", "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["sample.csv"]


def test_01_user_errors_exit_1(tmp_path, capsys):
    out = tmp_path / "01"
    assert stage01.main(["--from-file", str(tmp_path / "missing.csv"), "--output-dir", str(out)]) == 1
    assert "error:" in capsys.readouterr().err
    bad = write_csv(tmp_path / "bad.csv", [["x"] * 7], header=HEADER[:-1])
    assert stage01.main(["--from-file", str(bad), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bad.csv: missing column(s) ingredient") and err.count("\n") == 1
    assert not (out / "manifest.json").exists()


# --------------------------------------------------------------------------- kagglehub, offline


def test_kagglehub_pinned_version_served_offline_from_cache(tmp_path, monkeypatch, no_kaggle_credentials,
                                                            no_network, capsys):
    import os

    cache = Path(os.environ["KAGGLEHUB_CACHE"])  # per-test folder set by conftest
    build_kagglehub_cache(cache, "nguyentuongquang", "all-recipes", 3, {"allrecipes.csv": SAMPLE.read_bytes()})
    out = tmp_path / "01"
    rc = stage01.main(["--dataset", "nguyentuongquang/all-recipes/versions/3", "--output-dir", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert no_network == []
    manifest = read_json(out / "manifest.json")
    assert manifest["source"]["kind"] == "kaggle"
    assert manifest["source"]["handle"] == "nguyentuongquang/all-recipes" and manifest["source"]["version"] == 3
    assert (out / "raw" / "allrecipes.csv").read_bytes() == SAMPLE.read_bytes()
    assert read_jsonl(out / "records.jsonl") == clean_allrecipes_csv(SAMPLE)[0]


def test_kagglehub_pinned_version_not_cached_and_no_credentials(no_kaggle_credentials, no_network, tmp_path):
    with pytest.raises(StageError, match="no Kaggle credentials found") as err:
        download_kaggle("nguyentuongquang/all-recipes/versions/9", tmp_path / "raw",
                        project_root=no_kaggle_credentials)
    assert "KAGGLE_USERNAME" in str(err.value) and "kaggle.json" in str(err.value)
    assert no_network == []


def test_01_missing_credentials_is_one_line(no_kaggle_credentials, no_network, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("distill.source.PROJECT_ROOT", no_kaggle_credentials)  # no kaggle.json there
    assert stage01.main(["--output-dir", str(tmp_path / "01")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Kaggle credentials found") and err.count("\n") == 1


def test_unpinned_handle_without_network_is_a_clear_error(monkeypatch, unreachable_kaggle, tmp_path):
    import os

    monkeypatch.setenv("KAGGLE_USERNAME", "dummy")
    monkeypatch.setenv("KAGGLE_KEY", "dummy")
    # A cached copy does not help an unpinned handle: kagglehub asks for the latest version first.
    build_kagglehub_cache(Path(os.environ["KAGGLEHUB_CACHE"]), "nguyentuongquang", "all-recipes", 3,
                          {"allrecipes.csv": SAMPLE.read_bytes()})
    with pytest.raises(StageError) as err:
        download_kaggle("nguyentuongquang/all-recipes", tmp_path / "raw")
    msg = str(err.value)
    assert msg.startswith("cannot reach Kaggle to fetch nguyentuongquang/all-recipes")
    assert "--dataset nguyentuongquang/all-recipes/versions/3" in msg


def test_project_root_kaggle_json_is_used_and_env_restored(monkeypatch, no_kaggle_credentials, unreachable_kaggle,
                                                           tmp_path):
    import os

    monkeypatch.delenv("KAGGLE_CONFIG_DIR")
    project = tmp_path / "project"
    project.mkdir()
    (project / "kaggle.json").write_text('{"username": "dummy", "key": "dummy"}', encoding="utf-8")
    # Credentials found in the project root, so the download gets as far as the (unreachable) network.
    with pytest.raises(StageError, match="cannot reach Kaggle"):
        download_kaggle("someone/something/versions/1", tmp_path / "raw", project_root=project)
    assert "KAGGLE_CONFIG_DIR" not in os.environ

    (project / "kaggle.json").write_text('{"username": "dummy"}', encoding="utf-8")
    with pytest.raises(StageError, match="missing 'key'"):
        download_kaggle("someone/something/versions/1", tmp_path / "raw", project_root=project)


# --------------------------------------------------------------------------- kagglehub, online (fake Kaggle API)


class FakeKaggle:
    """Answers kagglehub's dataset RPCs; reached as an HTTP forward proxy for http://localhost."""

    def __init__(self, files: dict[str, bytes], version: int = 2, status: int = 200):
        self.files, self.version, self.status = files, version, status
        self.calls: list[tuple[str, dict, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rpc = urlsplit(self.path).path.rsplit("/", 1)[-1]
                fake.calls.append((rpc, json.loads(body or b"{}"), self.headers.get("Authorization")))
                if fake.status != 200:
                    return self._send(fake.status, json.dumps({"code": fake.status, "message": "nope"}).encode(),
                                      "application/json")
                if rpc == "GetDataset":
                    return self._send(200, json.dumps({"currentVersionNumber": fake.version}).encode(),
                                      "application/json")
                if rpc == "DownloadDataset":
                    buf = io.BytesIO()
                    with zipfile.ZipFile(buf, "w") as zf:
                        for name, data in fake.files.items():
                            zf.writestr(name, data)
                    return self._send(200, buf.getvalue(), "application/zip")
                return self._send(404, b"{}", "application/json")

            def _send(self, status, data, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_kaggle(monkeypatch):
    servers = []

    def start(**kw):
        srv = FakeKaggle(**kw)
        servers.append(srv)
        for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                    "KAGGLE_KERNEL_RUN_TYPE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{srv.port}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{srv.port}")
        return srv

    yield start
    for srv in servers:
        srv.close()


def test_kagglehub_download_then_pinned_reuse_offline(fake_kaggle, monkeypatch, tmp_path, no_kaggle_credentials):
    import os

    monkeypatch.setenv("KAGGLE_USERNAME", "dummy")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    srv = fake_kaggle(files={"allrecipes.csv": SAMPLE.read_bytes()}, version=2)
    got = download_kaggle("nguyentuongquang/all-recipes", tmp_path / "raw")
    assert [c[0] for c in srv.calls] == ["GetDataset", "DownloadDataset"]
    assert srv.calls[1][1]["datasetVersionNumber"] == 2 and srv.calls[0][2].startswith("Basic ")
    assert got["version"] == 2 and got["handle"] == "nguyentuongquang/all-recipes"
    assert [p.name for p in got["files"]] == ["allrecipes.csv"]
    assert got["files"][0].read_bytes() == SAMPLE.read_bytes()
    cache = Path(os.environ["KAGGLEHUB_CACHE"]) / "datasets" / "nguyentuongquang" / "all-recipes"
    assert (cache / "2.complete").exists() and (cache / "versions" / "2" / "allrecipes.csv").exists()

    # What kagglehub wrote is reused for the pinned handle without any request or credentials.
    srv.close()
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    again = download_kaggle("nguyentuongquang/all-recipes/versions/2", tmp_path / "raw2",
                            project_root=no_kaggle_credentials)
    assert again["files"][0].read_bytes() == SAMPLE.read_bytes() and len(srv.calls) == 2


@pytest.mark.parametrize("status,pattern", [
    (404, r"Kaggle dataset nobody/nothing not found \(HTTP 404\)"),
    (401, r"Kaggle refused nobody/nothing \(HTTP 401, credentials from KAGGLE_API_TOKEN\)"),
    (500, r"Kaggle API error fetching nobody/nothing \(HTTP 500\)"),
])
def test_kaggle_api_refusals_are_clear_errors(fake_kaggle, monkeypatch, tmp_path, status, pattern):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "dummy-token")
    srv = fake_kaggle(files={}, status=status)
    with pytest.raises(StageError, match=pattern) as err:
        download_kaggle("nobody/nothing", tmp_path / "raw")
    assert "\n" not in str(err.value)
    assert srv.calls[0][2] == "Bearer dummy-token"  # kagglehub read KAGGLE_API_TOKEN itself
