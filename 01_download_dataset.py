#!/usr/bin/env python3
"""Stage 01: fetch the source dataset (kagglehub) or import a local file, clean it into records.

Writes to --output-dir: records.jsonl (one cleaned record per line, stable "id"),
raw/ (a copy of the source file as read), clean_report.json (duplicates, unparseable
rows by reason, encoding) and manifest.json last. Re-running replaces the output.

--from-pages DIR imports saved web pages (DIR/<host>/<name>.html) instead: one record per
page whose schema.org markup (the task's pages.type) gives an answer. The record holds that
answer (mapped to the output schema), the fields the task's checks read, the page's host
and path, and what a model reads of the page (the reader of 08, markup removed) as "text":
a real input that 02 passes on unchanged. Pages without markup are listed and skipped.

Kaggle needs credentials: KAGGLE_USERNAME + KAGGLE_KEY (or KAGGLE_API_TOKEN), or a
kaggle.json in the project root or ~/.kaggle/. kagglehub asks Kaggle for the latest
version of an unpinned handle even when it has a copy cached, so offline only a
pinned version (OWNER/SLUG/versions/N) already in $KAGGLEHUB_CACHE works.

Usage:
    python 01_download_dataset.py                                        # latest nguyentuongquang/all-recipes
    python 01_download_dataset.py --dataset nguyentuongquang/all-recipes/versions/1   # pinned (cache-friendly)
    python 01_download_dataset.py --from-file ~/Downloads/allrecipes.csv  # offline: a local copy
    python 01_download_dataset.py --sample                               # offline: the task's bundled sample
    python 01_download_dataset.py --from-pages saved_pages/              # saved pages: real inputs + markup answers
    python 01_download_dataset.py --task recipe --limit 500 --output-dir data/01_source
    python 01_download_dataset.py --list-tasks
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill import importing
from distill.cli import non_negative_int, run
from distill.io import SOURCE_DIR


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Where the data comes from (one of; default: the task's Kaggle dataset)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=None, metavar="OWNER/SLUG[/versions/N]",
                     help="Kaggle dataset handle (default: the task's source.kaggle, "
                          "nguyentuongquang/all-recipes for recipe); pin /versions/N to work offline from the cache")
    src.add_argument("--from-file", type=Path, default=None, metavar="PATH",
                     help="import a local CSV/JSONL instead of downloading (the offline route)")
    src.add_argument("--sample", action="store_true",
                     help="import the task folder's bundled sample file (offline smoke runs)")
    src.add_argument("--from-pages", type=Path, default=None, metavar="DIR",
                     help="import a folder of saved .html pages (any depth; the parent folder names the host): "
                          "records from their schema.org markup, with the page's readable text as a real input")
    # How to read it
    p.add_argument("--task", default="recipe", help="task folder under tasks/; picks the parser and default dataset")
    p.add_argument("--parser", default=None,
                   help="source parser: allrecipes_csv, csv or jsonl (default: the task's source.parser)")
    p.add_argument("--limit", type=non_negative_int, default=0, help="keep the first N cleaned records (0 = all)")
    # Where it goes
    p.add_argument("--output-dir", type=Path, default=SOURCE_DIR, help="output directory (records.jsonl etc.)")
    p.add_argument("--list-tasks", action="store_true", help="list the available task folders and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: importing.run_stage(args))



if __name__ == "__main__":
    sys.exit(main())
