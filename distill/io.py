"""Paths, atomic writes, JSON/JSONL helpers, stage manifests and run locks.

Every stage writes its artifacts atomically (temp file + rename) so an
interrupted run never leaves a half-written file that looks finished, and
writes ``manifest.json`` *last*: the next stage refuses to start on a
directory without one (see :func:`require_manifest`).
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = PROJECT_ROOT / "tasks"
MANIFEST = "manifest.json"

# Default stage directories, relative to the working directory.
DATA_DIR = Path("data")
SOURCE_DIR = DATA_DIR / "01_source"
SYNTHETIC_DIR = DATA_DIR / "02_synthetic"
LABELED_DIR = DATA_DIR / "03_labeled"
DATASET_DIR = DATA_DIR / "04_dataset"


class StageError(Exception):
    """A user-facing error: the scripts print it as one line and exit 1."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, "rb") as f:  # bytes decoded at once: no text layer (at 100k files it showed)
            return json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise StageError(f"{path}: not a UTF-8 text file (a binary file? byte {exc.start} is "
                         f"0x{exc.object[exc.start]:02x}): move it out of the folder") from exc


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def json_files(folder: str | os.PathLike, skip: Iterable[str] = ()) -> list[str]:
    """The paths (strings) of the ``*.json`` files directly in ``folder``, sorted by name, without
    the names in ``skip``. A stage folder holds one file per item: at 100k items, globbing and
    sorting Path objects took longer than reading the files."""
    skip = set(skip)
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.name.endswith(".json") and e.name not in skip and e.is_file())
    return [os.path.join(folder, n) for n in names]


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file from a stage folder that must hold one object.

    A stray file in a stage folder (binary, not JSON, a list) is refused with its name and
    the reason, never skipped silently and never a traceback: the user moves it away or
    re-runs the stage that wrote it.
    """
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise StageError(f"{path}: expected a JSON object, got {type(obj).__name__}: move it out of the folder")
    return obj


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a malformed line or a byte that is not UTF-8 is an error naming file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise StageError(f"{path}:{lineno}: not UTF-8 (byte 0x{data[exc.start]:02x}); "
                         f"JSONL files must be UTF-8") from None
    return parse_jsonl(text, path)


def parse_jsonl(text: str, path: str | os.PathLike) -> list[dict]:
    """JSON objects, one per line of ``text``; errors name ``path`` and the line."""
    rows = []
    # Split on newlines only: JSON strings may hold U+2028 and other characters splitlines() breaks on.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StageError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise StageError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short, stable hex digest of JSON-serialisable parts (ids, cache keys)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(out_dir: str | os.PathLike, stage: str, args: dict, counts: dict, **extra: Any) -> Path:
    """Write the stage manifest. Call it last: its presence means 'finished'."""
    manifest = {
        "stage": stage,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
        "counts": counts,
        **extra,
    }
    return write_json(Path(out_dir) / MANIFEST, manifest)


def read_manifest(stage_dir: str | os.PathLike) -> dict | None:
    p = Path(stage_dir) / MANIFEST
    return read_json(p) if p.exists() else None


def require_manifest(stage_dir: str | os.PathLike, producer: str) -> dict:
    """Refuse to start on a stage directory whose producer did not finish."""
    stage_dir = Path(stage_dir)
    if not stage_dir.exists():
        raise StageError(f"{stage_dir} does not exist: run {producer} first")
    m = read_manifest(stage_dir)
    if m is None:
        raise StageError(
            f"{stage_dir} has no {MANIFEST}: {producer} did not finish there. "
            f"Re-run {producer} (it resumes) before this stage."
        )
    return m


def check_output_dir(out: str | os.PathLike, stage: str, inputs: Iterable[str | os.PathLike | None] = (),
                     *, flag: str = "--output-dir") -> Path:
    """Refuse an output folder that would lose data, before anything is written.

    * it exists and is not a folder;
    * it is one of the ``inputs`` (03 writing its labels over 02's inputs), contains an input
      folder or file, or lies inside an input folder (a re-run would read its own outputs);
    * it holds another stage's ``manifest.json`` (03 pointed at 01's folder).

    ``stage`` is the name this stage writes into its manifest; a folder holding that
    stage's own manifest is a re-run and is fine.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StageError(f"{flag} {out} is a file, not a folder: give a folder path")
    if out.is_symlink() and not out.exists():
        raise StageError(f"{flag} {out} is a broken symlink")
    ro = out.resolve()
    for inp in inputs:
        if inp is None:
            continue
        ri = Path(inp).resolve()
        if ri == ro:
            raise StageError(f"{flag} {out} is this stage's input {inp}: its files would be overwritten; "
                             f"pick another {flag}")
        if ro in ri.parents:
            raise StageError(f"{flag} {out} contains this stage's input {inp}: pick a folder outside it")
        if ri.is_dir() and ri in ro.parents:
            raise StageError(f"{flag} {out} is inside this stage's input folder {inp}: a re-run would read "
                             f"its own outputs as inputs; pick a folder outside it")
    p = out / MANIFEST
    if p.is_file():
        try:
            other = json.loads(p.read_text(encoding="utf-8")).get("stage")
        except (ValueError, UnicodeDecodeError, AttributeError):
            other = "an unknown stage"
        if other != stage:
            raise StageError(f"{flag} {out} holds the output of {other} (its {MANIFEST}): "
                             f"pick another {flag}, this stage would write over it")
    return out


def clear_manifest(stage_dir: str | os.PathLike) -> None:
    """Mark a stage directory as in progress (a re-run removes the old 'finished' mark first)."""
    p = Path(stage_dir) / MANIFEST
    if p.exists():
        p.unlink()


@contextmanager
def run_lock(stage_dir: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock so two runs cannot write the same stage directory at once."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    fh = open(stage_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StageError(f"another run is writing {stage_dir}; wait for it or pick another --output-dir") from exc
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
