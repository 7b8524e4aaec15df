"""Reading the user's inputs for 08_extract.py: plain text, Markdown and saved HTML pages.

* Plain text and Markdown go to the model as they are (the student was trained on messy
  text, Markdown included); only the line endings and a byte-order mark are normalised.
* HTML becomes the page's visible text, windowed to the recipe card when the page is long
  (:func:`distill.pages.page_text`, the reader every stage shares). Scripts, styles and the
  page's embedded JSON-LD never reach the prompt; microdata attributes are not text: a page
  that already carries its schema.org answer must not hand it to the model.
* Kinds come from the file suffix; stdin and unknown suffixes are sniffed (``<html`` or
  ``<!doctype html`` near the start means HTML).

``read_inputs(paths, input_dir=..., stdin=...)`` returns :class:`Document` objects with a
``name`` (the input's stem, used for the output file name) and the ``text`` to extract from.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

from .io import StageError

# The reader's window over long pages when no task says otherwise (the recipe task's pages.max_chars).
DEFAULT_PAGE_CHARS = 7000

HTML_SUFFIXES = {".html", ".htm", ".xhtml", ".shtml"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
TEXT_SUFFIXES = {".txt", ".text", ""}
# What a directory walk picks up (anything else in the folder is ignored and counted).
KNOWN_SUFFIXES = HTML_SUFFIXES | MARKDOWN_SUFFIXES | (TEXT_SUFFIXES - {""})

_HTML_SNIFF = re.compile(rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*(?:<!doctype\s+html|<html[\s>])", re.I | re.S)


@dataclass
class Document:
    name: str          # output stem: the input's file stem, or "stdin"
    source: str        # where it came from (path or "-"), for messages
    kind: str          # "text" | "markdown" | "html" | "binary"
    text: str          # what the model reads
    chars_in: int      # size of the raw input (characters after decoding)
    error: str | None = None  # why this input cannot be extracted from (a binary file); never sent to a model
    html: str | None = None   # the decoded page, for HTML inputs (re-read with another window: refocus)

    def refocus(self, max_chars: int) -> None:
        """Re-read an HTML input with the task's window (``pages.max_chars``); other kinds are unchanged."""
        if self.html is not None:
            self.text = html_to_text(self.html, max_chars)


def _decode(data: bytes) -> str:
    # UTF-8 (with or without BOM) is by far the most common; anything else is decoded with
    # replacement characters rather than refused, since a stray byte should not lose a file.
    text = data.decode("utf-8-sig", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def binary_reason(data: bytes) -> str | None:
    """Why ``data`` is not text (a PDF, an image, an archive), or None for text.

    NUL bytes never occur in text files (UTF-16, which has them, is named as such). Without
    them, control bytes (below 0x20, other than whitespace and ESC) give binary data away: about
    one byte in ten of compressed or random data, none in text. Bytes above 0x7F are not counted:
    text in a legacy 8-bit encoding (cp1252, ISO-8859-7 Greek) is full of them.
    """
    head = data[:8192]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16 text (it has NUL bytes between the letters): save it as UTF-8 and run again"
    if b"\x00" in head:
        return "a binary file (it contains NUL bytes), not text, Markdown or HTML"
    control = sum(1 for b in head if b < 0x20 and b not in b"\t\n\r\f\v\x1b") + head.count(0x7F)
    if head and control / len(head) > 0.03:
        return (f"a binary file ({control} of its first {len(head)} bytes are control bytes), "
                f"not text, Markdown or HTML")
    return None


def sniff_kind(data: bytes, suffix: str = "") -> str:
    suffix = suffix.lower()
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if _HTML_SNIFF.match(data[:4096]):
        return "html"
    return "text"


def html_to_text(html: bytes | str, max_chars: int = DEFAULT_PAGE_CHARS) -> str:
    """What a model reads of a saved web page (see distill.pages): visible text, the recipe window of long pages."""
    from .pages import page_text

    return page_text(html, max_chars).text


def document_from_bytes(data: bytes, *, name: str, source: str, suffix: str = "") -> Document:
    why = binary_reason(data)
    if why is not None:
        return Document(name=name, source=source, kind="binary", text="", chars_in=len(data), error=why)
    kind = sniff_kind(data, suffix)
    raw = _decode(data)
    if kind == "html":
        return Document(name=name, source=source, kind=kind, text=html_to_text(raw), chars_in=len(raw), html=raw)
    return Document(name=name, source=source, kind=kind, text=raw.strip(), chars_in=len(raw))


def read_document(path: str | Path) -> Document:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise StageError(f"cannot read {p}: {exc.strerror or exc}") from exc
    return document_from_bytes(data, name=p.stem or p.name, source=str(p), suffix=p.suffix)


def read_stdin(stream: BinaryIO | None = None) -> Document:
    stream = stream or sys.stdin.buffer
    return document_from_bytes(stream.read(), name="stdin", source="-")


def list_input_dir(input_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(inputs, ignored): files with a known suffix in ``input_dir`` (recursively, sorted), and the rest."""
    d = Path(input_dir)
    if not d.is_dir():
        raise StageError(f"--input-dir {d}: not a folder")
    files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
    inputs = [p for p in files if p.suffix.lower() in KNOWN_SUFFIXES]
    ignored = [p for p in files if p.suffix.lower() not in KNOWN_SUFFIXES]
    return inputs, ignored


def output_names(paths: Iterable[Path], root: Path | None = None) -> dict[Path, str]:
    """Output stem per input: the file stem; inputs with clashing stems (a.txt and a.html, or
    sub/a.txt) get their relative path with separators and suffix folded in, so none overwrites another.

    The path is relative to ``root`` (the input folder) or, for files named on the command line,
    to the deepest folder holding all the clashing ones: an absolute path never becomes a name
    starting with ``/``, which would put the output outside the output folder.
    """
    paths = list(paths)
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    clashing = [p.resolve() for p in paths if stems[p.stem] > 1]
    base = Path(os.path.commonpath([p.parent for p in clashing])) if root is None and clashing else None
    names = {}
    for p in paths:
        if stems[p.stem] == 1:
            names[p] = p.stem
        else:
            rel = p.relative_to(root) if root is not None else p.resolve().relative_to(base)
            names[p] = "__".join(rel.parts[:-1] + (f"{p.stem}.{p.suffix.lstrip('.')}",)).replace(".", "_") \
                if p.suffix else "__".join(rel.parts)
    return names
