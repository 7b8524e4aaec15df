"""Chained tasks: several small models run one after another (``steps:`` in task.yaml).

Training (05_finetune.py calls :func:`train_chain` when the dataset's task has steps)::

    04 dataset (text -> verified label)
      step 1 data: text -> step 1's target, rendered from the label (target_template)
      train step 1; run it over the train and val inputs
      step 2 data: step 1's *generated* output -> step 2's target (the label JSON for the last step)
      train step 2 ...

so each later step learns from what the earlier step really produces, mistakes included,
not from clean ground truth it will never see at run time. Every step folder is a normal
05 folder (adapter + distill_config.json with the step's exact prompt); the chain folder
holds them plus ``chain.json`` (written last: a chain without it is unfinished) and the
generated intermediate texts.

Evaluation: :func:`load_chain_predictor` gives a predictor with the interface of
:class:`distill.infer.Predictor`, so 07_evaluate.py scores a chain folder end to end
(text -> step 1 -> ... -> JSON) against the references like any model. Each step is
loaded, run over all inputs and closed before the next one, so only one model is in
memory at a time.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .infer import load_predictor
from .io import (
    StageError,
    read_json,
    read_jsonl,
    read_manifest,
    require_manifest,
    stable_hash,
    write_json,
    write_jsonl,
    write_manifest,
)
from .spec import CHAIN_FILE, is_chain_dir
from .tasks import Task, load_task

SPLITS = ("train", "val", "test")


def step_dir_name(index: int, task: Task) -> str:
    return f"step{index + 1}-{task.steps[index].name}"


def step_target(task: Task, index: int, reference: dict) -> str:
    """The answer step ``index`` is trained on: rendered text, or the label JSON for the last step."""
    st = task.steps[index]
    if index == len(task.steps) - 1:
        return json.dumps(reference, ensure_ascii=False)
    return st.render_target(reference)


def step_rows(task: Task, index: int, rows: list[dict], inputs: dict[str, str]) -> list[dict]:
    """Chat rows for one step: the step's prompt on ``inputs[id]``, answered with the step's target."""
    st = task.steps[index]
    out = []
    for r in rows:
        if r["id"] not in inputs:
            continue
        msgs = st.messages(inputs[r["id"]]) + [{"role": "assistant", "content": step_target(task, index, r["reference"])}]
        out.append({"messages": msgs, "id": r["id"], "source_id": r.get("source_id"), "style": r.get("style"),
                    "task": task.name, "step": st.name, "text": inputs[r["id"]], "reference": r["reference"]})
    return out


def write_step_dataset(out_dir: Path, task: Task, index: int, splits: dict[str, list[dict]],
                       inputs: dict[str, dict[str, str]]) -> Path:
    """A dataset folder in 04's format for one step (the training core reads it unchanged)."""
    st = task.steps[index]
    counts = {}
    for s in SPLITS:
        rows = step_rows(task, index, splits.get(s, []), inputs.get(s, {}))
        write_jsonl(out_dir / f"{s}.jsonl", rows)
        counts[s] = len(rows)
    write_manifest(out_dir, "04_build_dataset", {"chain_step": st.name}, counts, task=task.name, step=st.name,
                   step_index=index, system_prompt=st.system_prompt, user_template=st.user_template,
                   reasoning="strip")
    return out_dir


def _load_splits(dataset_dir: Path) -> tuple[dict[str, list[dict]], dict]:

    manifest = require_manifest(dataset_dir, "04_build_dataset.py")
    splits = {s: read_jsonl(dataset_dir / f"{s}.jsonl") if (dataset_dir / f"{s}.jsonl").exists() else []
              for s in SPLITS}
    if not splits["train"]:
        raise StageError(f"{dataset_dir}/train.jsonl is empty: build the dataset with 04_build_dataset.py first")
    for s, rows in splits.items():
        for i, r in enumerate(rows, 1):
            if not isinstance(r.get("text"), str) or not isinstance(r.get("reference"), dict):
                raise StageError(f"{dataset_dir}/{s}.jsonl row {i} has no text/reference: rebuild it with 04")
    return splits, manifest


def run_step(step_dir: str | Path, texts: list[str], *, max_new_tokens: int, concurrency: int = 1,
             progress: bool = True, task: Task | None = None) -> list[Any]:
    """Run one trained step over ``texts``; returns its Predictions (in order).

    ``task`` is the step's view of the task (Task.step_task), so the prompt saved with
    the step is recognised as the step's own and not reported as a changed prompt.
    """
    if not texts:
        return []
    with load_predictor(str(step_dir), task=task, max_new_tokens=max_new_tokens, concurrency=concurrency) as pred:
        return pred.predict(texts, progress=progress)


def step_output_text(prediction: Any) -> str:
    """What a step hands to the next: its answer without reasoning, as generated (errors included)."""
    return (prediction.answer or "").strip()


def train_chain(task: Task, cfg, *, step_max_new_tokens: int = 256, concurrency: int = 1,
                train_fn: Callable | None = None, progress: bool = True) -> dict:
    """Train every step of ``task`` in order into ``cfg.save_dir``; see the module docstring.

    ``cfg`` is a :class:`distill.train.config.TrainConfig`: each step gets a copy with its
    own dataset and save folder. A step whose folder already holds a model trained on the
    same rows with the same settings is reused, so an interrupted chain resumes.
    """
    if not task.steps:
        raise StageError(f"task {task.name} has no steps: train it with 05_finetune.py as one model")
    if train_fn is None:
        from .train.core import run as train_fn  # noqa: N806 - the training core
    root = Path(cfg.save_dir)
    splits, manifest = _load_splits(Path(cfg.dataset_dir))
    if manifest.get("task") and manifest["task"] != task.name:
        raise StageError(f"{cfg.dataset_dir} is a dataset of task {manifest['task']!r}, not {task.name!r}")
    root.mkdir(parents=True, exist_ok=True)
    (root / CHAIN_FILE).unlink(missing_ok=True)  # unfinished until written again at the end

    inputs = {s: {r["id"]: r["text"] for r in rows} for s, rows in splits.items() if s != "test"}
    steps_out = []
    t0 = time.time()
    for i, st in enumerate(task.steps):
        name = step_dir_name(i, task)
        ds_dir = write_step_dataset(root / "data" / name, task, i, splits, inputs)
        save = root / name
        step_cfg = cfg.replace(dataset_dir=str(ds_dir), save_dir=str(save),
                               output_dir=str(Path(cfg.output_dir) / name))
        key = stable_hash(read_jsonl(ds_dir / "train.jsonl"), read_jsonl(ds_dir / "val.jsonl"),
                          {k: v for k, v in step_cfg.to_dict().items() if k not in ("output_dir",)})
        marker = save / "chain_step.json"
        if marker.exists() and read_json(marker).get("key") == key and (save / "distill_config.json").exists():
            print(f"chain: step {i + 1}/{len(task.steps)} {st.name}: already trained on the same data, reused")
            metrics = read_json(save / "distill_config.json").get("metrics", {})
        else:
            print(f"chain: step {i + 1}/{len(task.steps)} {st.name}: training on "
                  f"{len(read_jsonl(ds_dir / 'train.jsonl'))} examples")
            metrics = train_fn(step_cfg)["metrics"]
            write_json(marker, {"key": key, "step": st.name, "index": i, "trained_at": time.time()})
        info = {"name": st.name, "dir": name, "dataset_dir": str(ds_dir.relative_to(root)), "metrics": metrics}
        if i < len(task.steps) - 1:
            inputs = _generate_step_outputs(task, i, save, root / "data" / f"{name}.generated.jsonl", splits,
                                            inputs, info, step_max_new_tokens, concurrency, progress)
        steps_out.append(info)

    chain = {"task": task.name, "steps": steps_out, "dataset_dir": str(cfg.dataset_dir),
             "step_max_new_tokens": step_max_new_tokens, "train_config": cfg.to_dict(),
             "trained_s": round(time.time() - t0, 1), "fingerprint": stable_hash(steps_out, time.time())}
    write_json(root / CHAIN_FILE, chain)
    print(f"chain: {' -> '.join(s['name'] for s in steps_out)} saved to {root}")
    return chain


def _generate_step_outputs(task: Task, i: int, save: Path, gen_path: Path, splits: dict, inputs: dict, info: dict,
                           max_new_tokens: int, concurrency: int, progress: bool) -> dict[str, dict[str, str]]:
    """Run trained step ``i`` over the train and val inputs: the next step's training inputs.

    Reused when the same trained step already ran on the same inputs (the key is kept in
    the step's chain_step.json, which a re-training replaces).
    """
    marker = save / "chain_step.json"
    m = read_json(marker)
    gen_key = stable_hash(m.get("trained_at"), {s: inputs.get(s, {}) for s in ("train", "val")}, max_new_tokens)
    st = task.steps[i]
    if m.get("generated_key") == gen_key and gen_path.exists():
        rows = read_jsonl(gen_path)
        info["generated"] = m.get("generated_stats")
        print(f"chain: step {st.name}'s outputs on the same inputs reused from {gen_path.name}")
        return {s: {g["id"]: g["generated"] for g in rows if g["split"] == s} for s in ("train", "val")}
    generated: dict[str, dict[str, str]] = {}
    stats, rows = {}, []
    for s in ("train", "val"):
        ids = list(inputs.get(s, {}))
        preds = run_step(save, [inputs[s][k] for k in ids], max_new_tokens=max_new_tokens,
                         concurrency=concurrency, progress=progress, task=task.step_task(i))
        generated[s] = {k: step_output_text(p) for k, p in zip(ids, preds)}
        targets = {r["id"]: step_target(task, i, r["reference"]) for r in splits[s]}
        # an empty output against an empty target is not a match (the same rule as 07's scores)
        stats[s] = {"n": len(ids), "with_target": sum(bool(targets[k].strip()) for k in ids),
                    "exact_match_target": sum(bool(targets[k].strip()) and generated[s][k] == targets[k]
                                              for k in ids),
                    "empty": sum(not generated[s][k] for k in ids),
                    "cut_off": sum(p.finish_reason == "length" for p in preds)}
        rows += [{"split": s, "id": k, "input": inputs[s][k], "generated": generated[s][k], "target": targets[k]}
                 for k in ids]
    write_jsonl(gen_path, rows)
    write_json(marker, m | {"generated_key": gen_key, "generated_stats": stats})
    print(f"chain: step {st.name} output matches its target exactly on {stats['train']['exact_match_target']}/"
          f"{stats['train']['with_target']} train inputs with a non-empty target; these generated texts are the "
          f"next step's training inputs")
    info["generated"] = stats
    return generated


# ------------------------------------------------------------------ inference through a chain

class ChainPredictor:
    """Runs a chain folder like one model: the interface of distill.infer.Predictor."""

    def __init__(self, chain_dir: str | Path, *, max_new_tokens: int = 1024, concurrency: int = 1,
                 context: int | None = None, constrain: str = "schema", resumes: int = 2):
        self.dir = Path(chain_dir)
        if not is_chain_dir(self.dir):
            raise StageError(f"{self.dir} has no {CHAIN_FILE}: not a finished chain (re-run 05_finetune.py)")
        self.chain = read_json(self.dir / CHAIN_FILE)
        self.task = load_task(self.chain["task"])
        self.max_new_tokens = max_new_tokens
        self.step_max_new_tokens = int(self.chain.get("step_max_new_tokens", max_new_tokens))
        self.concurrency, self.context, self.constrain, self.resumes = concurrency, context, constrain, resumes
        self.info = {"backend": "chain", "steps": [s["dir"] for s in self.chain["steps"]], "spec": str(self.dir)}
        self.last_steps: list[list[str]] = []  # per input of the last predict: each intermediate output

    @property
    def name(self) -> str:
        return self.dir.name

    def predict_iter(self, texts: list[str], progress: bool = True, desc: str = "chain") -> Iterator[tuple[int, Any]]:
        current = list(texts)
        inter: list[list[str]] = [[] for _ in texts]
        t0 = time.time()
        preds: list[Any] = []
        n = len(self.chain["steps"])
        for i, st in enumerate(self.chain["steps"]):
            last = i == n - 1
            with load_predictor(str(self.dir / st["dir"]), task=self.task.step_task(i),
                                max_new_tokens=self.max_new_tokens if last
                                else self.step_max_new_tokens, concurrency=self.concurrency,
                                context=self.context,
                                # intermediate steps write their own format, not the task's schema
                                constrain=self.constrain if last else "none", resumes=self.resumes) as pred:
                preds = pred.predict(current, progress=progress)
            if not last:
                current = [step_output_text(p) for p in preds]
                for k, c in enumerate(current):
                    inter[k].append(c)
        self.last_steps = inter
        per_item = (time.time() - t0) / max(1, len(texts))
        for k, p in enumerate(preds):
            # The last step's answer is the chain's answer to the original input; the
            # intermediate texts stay in last_steps, so scoring sees only the final JSON.
            p.text = texts[k]
            p.latency_s = per_item
            yield k, p

    def predict(self, texts: list[str], progress: bool = True) -> list[Any]:
        out: list[Any] = [None] * len(texts)
        for k, p in self.predict_iter(texts, progress=progress):
            out[k] = p
        return out

    def close(self) -> None:
        pass

    def __enter__(self) -> "ChainPredictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_chain_predictor(chain_dir: str | Path, *, model_id: str | None = None, task: Task | None = None,
                         max_new_tokens: int = 1024, concurrency: int = 1, context: int | None = None,
                         constrain: str = "schema", resumes: int = 2) -> ChainPredictor:
    """load_predictor's signature for a chain folder (07_evaluate.py opens either the same way)."""
    if model_id:
        raise StageError("--model-id is for openai: models; a chain folder holds its own steps")
    pred = ChainPredictor(chain_dir, max_new_tokens=max_new_tokens, concurrency=concurrency, context=context,
                          constrain=constrain, resumes=resumes)
    if task is not None and task.name != pred.task.name:
        raise StageError(f"{chain_dir} is a chain of task {pred.task.name!r}, not {task.name!r}: drop --task")
    return pred


def chain_task_for(dataset_dir: str | Path, mode: str = "auto") -> Task | None:
    """05's --chain: the task to train as a chain, or None to train one model.

    auto: chain when the dataset's task declares steps; on: require steps; off: never.
    """
    if mode == "off":
        return None
    m = read_manifest(dataset_dir) or {}
    task = None
    if m.get("task"):
        try:
            task = load_task(m["task"])
        except StageError:
            # auto: a dataset of a task that is not installed here is trained as one model;
            # on: it must be a known chained task.
            if mode == "on":
                raise
    if task is not None and task.steps and m.get("step") is None:
        return task
    if mode == "on":
        raise StageError(f"--chain on: the dataset in {dataset_dir} is not of a task with steps "
                         f"({m.get('task') or 'no task named'}); drop --chain on")
    return None
