"""Constrained decoding and the loop guard (distill.constrain) on every backend.

The model is train_helpers' randomly initialised 2-layer Llama with SmolLM2's tokenizer: decoded
freely it writes newline after newline (invalid JSON, a runaway loop), which is what the
constraint and the guard are for. transformers runs it directly, llama-server runs its GGUF
(with a training config beside it, as 05 writes: the token-id /completion path), and the
openai: backend talks to the fake server, which answers schema-valid JSON only when the request
carries the task's schema as response_format.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.constrain import LoopGuard, close_stopped, complete_required, over_max_items, repeated_tail, resume_loops
from distill.infer import Prediction, complete_prediction, load_predictor
from distill.io import StageError
from distill.labels import validate
from distill.tasks import load_task
from fake_openai_server import FakeOpenAIServer, reply
from train_helpers import tiny_model_folder

TEXTS = ["Pancakes: 2 cups flour, 2 eggs, 1 cup milk. Whisk and fry 2 minutes a side.",
         "Guacamole. 3 avocados, 1 lime, salt. Mash with a fork."]


# ------------------------------------------------------------------ the guard's rules

def test_repeated_tail_fires_on_loops_not_on_a_real_answer():
    item = '"1 cup flour", '
    assert repeated_tail('{"recipeIngredient": [' + item * 6)
    assert repeated_tail("{" + "\n" * 64)
    assert not repeated_tail("{" + "\n" * 40)  # too short to call it a loop
    real = json.dumps({"name": "Pancakes", "recipeIngredient": ["1 egg", "1 egg white", "2 cups flour", "salt"],
                       "recipeInstructions": ["Mix.", "Fry.", "Serve."]})
    assert not repeated_tail(real)
    # Three copies of a long item back to back are a loop; two are not.
    step = '"Stir the batter until smooth and leave it to rest", '
    assert repeated_tail("[" + step * 3) and not repeated_tail("[" + step * 2)


def test_guard_stops_on_max_items_only_for_schemas_that_limit_arrays():
    schema = {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}}}}
    guard = LoopGuard(schema)
    assert guard.check('{"tags": ["a", "b", "c"') is None
    assert guard.check('{"tags": ["a", "b", "c", "d"') == "max_items"
    assert guard.check('<think>four tags</think>\n{"tags": ["a", "b", "c", "d", "e"') == "max_items"
    assert LoopGuard(load_task("recipe").schema).schema is None  # no maxItems: the partial answer is never parsed
    assert over_max_items({"a": [{"b": [1, 2]}]}, {"properties": {"a": {"items": {"properties": {
        "b": {"maxItems": 1}}}}}})


def test_an_unknown_constrain_mode_is_refused():
    with pytest.raises(StageError, match="constrain must be one of schema, none"):
        load_predictor("openai:http://127.0.0.1:9/v1", task=load_task("recipe"), constrain="json")
    with pytest.raises(StageError, match="resume_loops must be 0 or more"):
        load_predictor("openai:http://127.0.0.1:9/v1", task=load_task("recipe"), resumes=-1)


# ------------------------------------------------------------------ backends

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("constrain"))


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory) -> Path:
    """The tiny model as 05 lays out a trained GGUF: <save-dir>/gguf/*.gguf beside distill_config.json."""
    from transformers import AutoTokenizer

    from distill.llamacpp import convert_hf_to_gguf

    save = tmp_path_factory.mktemp("constrain-gguf") / "student"
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.save_pretrained(save)
    task = load_task("recipe")
    (save / "distill_config.json").write_text(json.dumps({
        "task": "recipe", "system_prompt": task.student_system_prompt, "user_template": task.student_user_template,
        "reasoning": "strip", "chat_template": tok.chat_template, "eos_token": tok.eos_token}))
    gguf = save / "gguf" / "model-F16.gguf"
    convert_hf_to_gguf(tiny, gguf, "f16")
    return gguf


def _check_constrained(free, constrained, schema):
    assert not any(p.valid for p in free)
    assert all(p.stopped == "repetition" and p.completion_tokens < 100 for p in free)  # the guard, not the limit
    for p in constrained:
        assert p.valid, p.error
        assert p.output["@type"] == "Recipe" and not validate(p.output, schema)
        assert p.stopped is None and p.finish_reason == "stop"


@pytest.mark.slow
def test_transformers_constrained_answers_are_schema_valid_and_the_guard_stops_the_loop(tiny):
    task = load_task("recipe")
    with load_predictor(str(tiny), task=task, max_new_tokens=300, constrain="none", concurrency=2) as pred:
        free = pred.predict(TEXTS, progress=False)
    with load_predictor(str(tiny), task=task, max_new_tokens=300, concurrency=2) as pred:  # schema by default
        assert pred.info["constrain"] == "schema"
        constrained = pred.predict(TEXTS, progress=False)
    assert all(p.raw.startswith("\n" * 60) for p in free)
    _check_constrained(free, constrained, task.schema)


def _bounded(schema):
    """The schema with every string at most 24 characters. llama.cpp's grammar lets a string run on
    (and a random model never closes one by itself: the guard then stops it as a loop); with the
    strings bounded the grammar alone must bring the answer to a valid end."""
    if isinstance(schema, dict):
        out = {k: _bounded(v) for k, v in schema.items()}
        types = schema.get("type")
        if types == "string" or (isinstance(types, list) and "string" in types):
            out["maxLength"] = 24
        return out
    return [_bounded(v) for v in schema] if isinstance(schema, list) else schema


@pytest.mark.slow
def test_llama_server_constrained_answers_are_schema_valid_and_the_guard_aborts_the_stream(tiny_gguf):
    import dataclasses

    recipe = load_task("recipe")
    task = dataclasses.replace(recipe, schema=_bounded(recipe.schema))
    with load_predictor(str(tiny_gguf), task=task, max_new_tokens=300, constrain="none", concurrency=2) as pred:
        assert pred.info["prompt"] == "training template, token ids"
        free = pred.predict(TEXTS, progress=False)
    with load_predictor(str(tiny_gguf), task=task, max_new_tokens=300, concurrency=2) as pred:
        constrained = pred.predict(TEXTS, progress=False)
    _check_constrained(free, constrained, task.schema)
    # The real recipe schema: strings are unbounded, so the answer is valid or stopped as a loop, never garbage.
    with load_predictor(str(tiny_gguf), max_new_tokens=300, concurrency=2) as pred:
        for p in pred.predict(TEXTS, progress=False):
            assert p.valid or (p.stopped == "repetition" and p.raw.startswith('{"@context"')), p.raw[:200]


def test_openai_backend_sends_the_schema_as_response_format():
    task = load_task("recipe")
    answer = {"@context": "https://schema.org", "@type": "Recipe", "name": "Pancakes",
              "recipeIngredient": ["2 cups flour"], "recipeInstructions": ["Fry."]}

    def handler(body: dict) -> str:
        # Like a server with structured output: the schema makes the JSON; without it the model rambles.
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema" and rf["json_schema"]["schema"] == task.schema:
            return json.dumps(answer)
        return "Sure! Here is the recipe: pancakes with flour"

    with FakeOpenAIServer(handler) as srv:
        with load_predictor(f"openai:{srv.url}", model_id="m", task=task, constrain="none") as pred:
            (free,) = pred.predict(TEXTS[:1], progress=False)
        with load_predictor(f"openai:{srv.url}", model_id="m", task=task) as pred:
            (constrained,) = pred.predict(TEXTS[:1], progress=False)
        assert srv.formats() == [None, "json_schema"], srv.formats()
    assert not free.valid and free.parse_error == "no_json"
    assert constrained.valid and constrained.output == answer


def test_openai_backend_marks_a_repeating_reply_as_stopped():
    task = load_task("recipe")
    loop = '{"@context": "https://schema.org", "@type": "Recipe", "recipeIngredient": [' + '"salt", ' * 30
    with FakeOpenAIServer(lambda body: loop) as srv:
        srv.push(reply(loop, finish_reason="length"), reply('{"name": "cut', finish_reason="length"))
        with load_predictor(f"openai:{srv.url}", model_id="m", task=task) as pred:
            looped_to_limit, cut, p = pred.predict(TEXTS[:1] * 3, progress=False)
    assert p.stopped == "repetition" and p.valid and p.output["recipeIngredient"] == ["salt"]
    assert p.output["recipeInstructions"] == []   # never reached: empty, scored as omitted
    assert looped_to_limit.stopped == "repetition"  # ran to the limit because it looped: counted as the loop
    # Cut by the token limit inside its first string: nothing it wrote is left, so no answer at all.
    assert cut.stopped == "length" and cut.parse_error == "length" and not cut.valid and cut.output is None
    # A loop that closes into a schema-valid answer (after its last complete step) is one, marked stopped.
    with FakeOpenAIServer(lambda body: LOOPING_STEPS) as srv:
        with load_predictor(f"openai:{srv.url}", model_id="m", task=task) as pred:
            (closed,) = pred.predict(TEXTS[:1], progress=False)
    assert closed.valid and closed.stopped == "repetition" and len(closed.output["recipeInstructions"]) == 2


# ------------------------------------------------------------------ closing a stopped answer

HEAD = '{"@context": "https://schema.org", "@type": "Recipe", "name": "Pancakes", '
# A student that loops on its second step until the guard stops it, mid-way through a copy.
LOOPING_STEPS = (HEAD + '"recipeIngredient": ["2 cups flour", "2 eggs", "1 cup milk"], "recipeInstructions": '
                 '[{"@type": "HowToStep", "text": "Whisk the flour, eggs and milk."}, '
                 + '{"@type": "HowToStep", "text": "Fry 2 minutes a side."}, ' * 6 + '{"@type": "HowToStep", "te')


def test_a_stopped_answer_closes_at_its_last_complete_item_with_one_copy_of_the_loop():
    assert LoopGuard().check(LOOPING_STEPS) == "repetition"   # a real stop, not a made-up one
    closed = close_stopped(LOOPING_STEPS)
    assert closed == json.loads(HEAD + '"recipeIngredient": ["2 cups flour", "2 eggs", "1 cup milk"], '
                                       '"recipeInstructions": [{"@type": "HowToStep", "text": "Whisk the flour, eggs '
                                       'and milk."}, {"@type": "HowToStep", "text": "Fry 2 minutes a side."}]}')
    # A list item is whole or left out; a string, number or key still being written is cut off.
    assert close_stopped('{"a": [{"b": 1}, {"b": 2, "c": "x') == {"a": [{"b": 1}]}
    assert close_stopped('{"a": "done", "b": "PT1') == {"a": "done"}
    assert close_stopped('{"a": 12, "b": 3') == {"a": 12}
    assert close_stopped('{"a": null, "b": ') == {"a": None}
    # The loop in the list still open at the stop keeps one copy of its block; earlier lists stay as written.
    assert close_stopped('{"x": [1, 1], "y": ["a", "b", "a", "b", "a"') == {"x": [1, 1], "y": ["a", "b"]}
    assert close_stopped("Sure! " + "\n" * 80) is None


def test_complete_prediction_keeps_a_closed_answer_only_if_it_fits_the_schema():
    task = load_task("recipe")

    def complete(raw, finish):
        return complete_prediction(Prediction(text="t", prompt_messages=[]), raw, task, finish)

    p = complete(LOOPING_STEPS, "repetition")
    assert p.valid and p.stopped == "repetition" and p.parse_error is None
    assert [s["text"] for s in p.output["recipeInstructions"]] == ["Whisk the flour, eggs and milk.",
                                                                   "Fry 2 minutes a side."]
    # Looping inside the ingredients: the steps it never reached are left empty (scored as omitted).
    loop = HEAD + '"recipeIngredient": [' + '"salt", ' * 30
    p = complete(loop, "repetition")
    assert p.valid and p.parse_error is None and p.stopped == "repetition"
    assert p.output == json.loads(HEAD + '"recipeIngredient": ["salt"], "recipeInstructions": []}')
    # A max_items stop and the token limit close the same way; the stop is recorded.
    assert complete(LOOPING_STEPS, "max_items").valid
    p = complete(LOOPING_STEPS, "length")
    assert p.valid and p.stopped == "length" and len(p.output["recipeInstructions"]) == 2
    # What cannot close into the schema stays no answer: a key the schema forbids, prose.
    p = complete('{"@name": "Pancakes", "recipeIngredient": ["fl', "length")
    assert p.output is None and p.parse_error == "length" and any("@name" in e for e in p.schema_errors)
    p = complete("Sure! Here is", "length")
    assert p.output is None and p.parse_error == "length"
    # Cut before its first complete member: nothing of the model's is left to finish.
    for raw in ('{"name": "Pan', "noise { noise noise noise", "{"):
        p = complete(raw, "repetition")
        assert p.output is None and p.parse_error == "repetition", raw


def test_complete_required_gives_only_values_that_say_nothing():
    schema = {"type": "object", "required": ["kind", "a", "b", "c", "inner"],
              "properties": {"kind": {"const": "Order"}, "a": {"type": ["string", "null"]},
                             "b": {"type": "array", "items": {"type": "string"}},
                             "c": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                             "inner": {"type": "object", "required": ["x"], "properties": {"x": {"type": "array"}}}}}
    assert complete_required({"b": ["kept"]}, schema) == {"b": ["kept"], "kind": "Order", "a": None, "c": None,
                                                          "inner": {"x": []}}
    assert complete_required({"inner": {}}, schema)["inner"] == {"x": []}
    # A required string, a list that must have items: no empty value, so they stay missing (invalid).
    strict = {"type": "object", "required": ["s", "l"],
              "properties": {"s": {"type": "string"}, "l": {"type": "array", "minItems": 1}}}
    assert complete_required({}, strict) == {}


def test_07_scores_a_stopped_prediction_saved_before_answers_were_closed_as_it_closes_now():
    from distill.evaluate import _pred_output

    task = load_task("recipe")
    old = {"answer": LOOPING_STEPS, "output": None, "parse_error": "repetition", "stopped": "repetition"}
    out, upstream = _pred_output(old, task)
    assert upstream is None and len(out["recipeInstructions"]) == 2
    # Saved before required fields were finished empty and the token limit's answers closed.
    old_loop = old | {"answer": HEAD + '"recipeIngredient": [' + '"salt", ' * 30}
    assert _pred_output(old_loop, task)[0]["recipeInstructions"] == []
    old_cut = old | {"stopped": "length", "parse_error": "length"}
    assert len(_pred_output(old_cut, task)[0]["recipeInstructions"]) == 2
    old_prose = old_cut | {"answer": "Sure! Here is"}
    assert _pred_output(old_prose, task) == (None, "length")


@pytest.mark.slow
def test_reasoning_runs_free_and_only_the_json_after_think_is_constrained(tiny):
    """The logits processor driven by a scripted "model" that prefers one token sequence: the
    <think> part passes as written, the JSON part is masked (the key "@name" is refused)."""
    import torch
    from transformers import AutoTokenizer

    from distill.constrain_hf import HFConstraint

    tok = AutoTokenizer.from_pretrained(tiny)
    schema = load_task("recipe").schema
    c = HFConstraint(tok, len(tok), schema, allow_think=True)
    think = "<think>\nA recipe with <b>two</b> eggs: {not JSON}.\n</think>\n\n"
    good = '{"@context": "https://schema.org", "@type": "Recipe", "name": "Eggs", "recipeIngredient": ["2 eggs"], ' \
           '"recipeInstructions": ["Boil."]}'
    bad = '{"@context": "https://schema.org", "@type": "Recipe", "@name": "Eggs"}'

    def drive(script: str) -> tuple[str, list[int], list[int]]:
        want = tok(script, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        proc = c.processor(1, 1, [tok.eos_token_id])
        ids = torch.tensor([[0]])
        for k in range(len(want)):
            scores = torch.zeros(1, len(tok))
            scores[0, want[k]] = 10.0
            nxt = int(proc(ids, scores).argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            if nxt != want[k] or nxt == tok.eos_token_id:
                break
        got = ids[0, 1:].tolist()
        return tok.decode(got, skip_special_tokens=True), got, want

    text, got, want = drive(think + good)
    assert got == want  # nothing masked: the reasoning is free, the JSON fits the schema
    assert text.startswith(think) and json.loads(text[len(think):])["name"] == "Eggs"
    text, got, want = drive(think + bad)
    assert got != want[: len(got)] and text.startswith(think + '{"@context": "https://schema.org", "@type": "Recipe", "')
    assert "@name" not in text  # the key outside the schema was refused
    text, got, want = drive(good)  # no reasoning at all: constrained from the first token
    assert got == want


def test_07_reports_the_stop_rate_and_keeps_constrained_and_free_predictions_apart(tmp_path):
    import importlib.util

    from test_evaluate_run import make_dataset

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("evaluate07_constrain", root / "07_evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = make_dataset(tmp_path / "ds", n=4)
    loop = '{"@context": "https://schema.org", "@type": "Recipe", "recipeIngredient": [' + '"salt", ' * 30

    def student(body: dict) -> str:
        text = body["messages"][-1]["content"].split("\n\n", 1)[1]
        row = next((r for r in rows if r["text"] == text), None)
        return loop if row is None or row["id"] in ("ex0", "ex1") else json.dumps(row["reference"])

    out = tmp_path / "o"
    with FakeOpenAIServer(student) as srv:
        args = ["--model", f"openai:{srv.url}", "--model-id", "m", "--task", "recipe", "--dataset-dir",
                str(tmp_path / "ds"), "--output-dir", str(out), "--no-adversarial", "--no-progress"]
        assert mod.main(args) == 0
        ev = json.loads((out / "eval.json").read_text())
        assert ev["constrain"] == "schema" and set(srv.formats()) == {"json_schema"}
        a = ev["aggregate"]
        assert a["stopped_rate"] == pytest.approx(0.5) and a["stopped"] == {"repetition": 2}
        # The loops close (one "salt", the steps never reached left empty): schema-valid, still stopped.
        assert a["parse_errors"] == {} and a["schema_valid"] == pytest.approx(1.0)
        looped = [e for e in ev["examples"] if e["stopped"]]
        assert sorted(e["id"] for e in looped) == ["ex0", "ex1"] and all(e["score"] < 0.5 for e in looped)
        assert "stopped (loop guard / limit)" in (out / "report.md").read_text()
        # The same folder with --constrain none: new predictions (another decoding), sent without a schema.
        sent = len(srv.history)
        assert mod.main(args + ["--constrain", "none"]) == 0
        assert len(srv.history) == sent + 4 and srv.formats()[sent:] == [None] * 4


# ------------------------------------------------------------------ resuming after a loop

LOOPING_INGREDIENTS = HEAD + '"recipeIngredient": ["2 cups flour", ' + '"2 eggs", ' * 8 + '"2 e'
RESUMED_AT = HEAD + '"recipeIngredient": ["2 cups flour", "2 eggs"]'
REST = ', "recipeInstructions": ["Whisk and fry 2 minutes a side."]}'


def test_resume_prefix_closes_the_loop_and_leaves_the_root_open():
    from distill.constrain import resume_prefix

    assert LoopGuard().check(LOOPING_INGREDIENTS) == "repetition"
    assert resume_prefix(LOOPING_INGREDIENTS) == RESUMED_AT
    assert resume_prefix("\n" * 80) is None and resume_prefix("{") is None   # nothing to go on from
    assert resume_prefix("<think>x</think>\n" + LOOPING_INGREDIENTS) is None  # reasoning-first: not resumed


def test_resume_loops_goes_on_after_the_loop_and_is_never_worse_than_stopping():
    from distill.constrain import resume_loops

    calls = []

    def cont_with(*replies):
        it = iter(replies)

        def cont(prefix, left):
            calls.append((prefix, left))
            return next(it)
        return cont

    def count(t):
        return len(t) // 4

    # The model writes the steps after the closed list and ends by itself: a whole answer.
    text, finish, info = resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count, cont_with((REST, "stop", 12)))
    assert json.loads(text)["recipeInstructions"] == ["Whisk and fry 2 minutes a side."]
    assert finish == "stop" and info == {"resumed": 1, "guard": "repetition"}
    assert calls == [(RESUMED_AT, 1000 - count(RESUMED_AT))]   # the prefix counts against the token limit
    # The continuation runs to the limit: the answer is what the guard closed, not the cut text.
    text, finish, info = resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count,
                                      cont_with((', "recipeInstructions": ["Whisk', "length", 50)))
    assert text == RESUMED_AT + "}" and finish == "repetition" and info["resumed"] == 1
    # It loops again at the same place: no second resume from the same prefix.
    calls.clear()
    again = RESUMED_AT[len(RESUMED_AT):] + ', "2 eggs"' * 8
    text, finish, info = resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count,
                                      cont_with(('], "recipeIngredient": [' + '"2 eggs", ' * 8, "repetition", 40),
                                                (again, "repetition", 40)))
    assert info["resumed"] <= 2 and len({p for p, _ in calls}) == len(calls)
    # No resumes allowed (--resume-loops 0): the stopped answer is left as it is.
    assert resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count, cont_with(), max_resumes=0) == (
        LOOPING_INGREDIENTS, "repetition", {"resumed": 0, "guard": "repetition"})
    # Not a loop, or no room left: nothing to resume.
    assert resume_loops('{"a": 1}', "stop", 1000, count, cont_with())[2] == {"resumed": 0, "guard": None}
    assert resume_loops(LOOPING_INGREDIENTS, "repetition", count(RESUMED_AT) + 1, count, cont_with())[2]["resumed"] == 0


def test_a_resumed_answer_that_breaks_the_schema_gives_way_to_what_the_guard_closed():
    """llama-server resumes free: a continuation may write keys the schema forbids. With the
    schema's fits check the answer falls back to the latest state that fits."""
    from distill.infer import answer_fits

    task = load_task("recipe")
    fits = answer_fits(task.schema)

    def count(t):
        return len(t) // 4

    def cont(*replies):
        it = iter(replies)
        return lambda prefix, left: next(it)

    bad_rest = ', "@media": "all", "recipeInstructions": ["Whisk and fry."]}'
    assert fits(LOOPING_INGREDIENTS, "repetition") and not fits(RESUMED_AT + bad_rest, "stop")
    # Without the check the broken answer would be the result; with it, the guard's stopped answer.
    assert resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count, cont((bad_rest, "stop", 9)))[0] == \
        RESUMED_AT + bad_rest
    text, finish, info = resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count, cont((bad_rest, "stop", 9)),
                                      fits=fits)
    assert (text, finish, info) == (LOOPING_INGREDIENTS, "repetition", {"resumed": 1, "guard": "repetition"})
    p = complete_prediction(Prediction(text="t", prompt_messages=[]), text, task, finish)
    assert p.valid and p.output["recipeIngredient"] == ["2 cups flour", "2 eggs"]
    # A first resume that fits and a second that breaks: the first one's answer stays.
    loop_steps = ', "recipeInstructions": ["Whisk.", ' + '"Fry.", ' * 8
    text, finish, info = resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count,
                                      cont((loop_steps, "repetition", 30), (', "@url": "x"}', "stop", 5)), fits=fits)
    assert info["resumed"] == 2 and finish == "repetition" and text == RESUMED_AT + loop_steps
    # A continuation that fits is kept as before.
    assert resume_loops(LOOPING_INGREDIENTS, "repetition", 1000, count, cont((REST, "stop", 12)), fits=fits)[0] == \
        RESUMED_AT + REST


def test_complete_prediction_of_a_resumed_answer_keeps_the_guards_stop():
    from distill.infer import _guarded

    task = load_task("recipe")
    p = _guarded(complete_prediction(Prediction(text="t", prompt_messages=[]), RESUMED_AT + REST, task, "stop"),
                 {"resumed": 1, "guard": "repetition"})
    assert p.valid and p.stopped == "repetition" and p.resumed == 1
    assert p.output["recipeIngredient"] == ["2 cups flour", "2 eggs"]


class _Scripted:
    """A real (tiny, random) transformers model whose next-token choice is scripted: it follows
    whichever script the answer so far is a prefix of, then ends the turn. Script one loops in the
    ingredient list; script two is the same answer resumed after the closed list, as the guard
    hands it back. Everything else (generate, llguidance masks, the guard, the backend) is real."""

    @staticmethod
    def build(tiny: Path, scripts: list[list[int]], prompt_end: list[int]):
        import torch
        from transformers import LlamaForCausalLM

        class ScriptedLlama(LlamaForCausalLM):
            def forward(self, input_ids=None, **kw):
                out = super().forward(input_ids=input_ids, **kw)
                ids = self._context(input_ids)
                logits = torch.full_like(out.logits[:, -1:, :], -1e4)
                for row, ctx in enumerate(ids):
                    logits[row, 0, self._next(ctx)] = 1e4
                out.logits = logits
                return out

        model = ScriptedLlama.from_pretrained(tiny)
        model._scripts, model._end, model._ctx = scripts, prompt_end, None

        def context(input_ids):
            # generate() feeds only new tokens once the cache is warm: keep the whole row ourselves
            rows = input_ids.tolist()
            if model._ctx is None or len(rows[0]) > 1:
                model._ctx = rows
            else:
                model._ctx = [c + r for c, r in zip(model._ctx, rows)]
            return model._ctx

        def nxt(ctx):
            n = len(model._end)
            start = max(i + n for i in range(len(ctx) - n + 1) if ctx[i:i + n] == model._end)
            answer = ctx[start:]
            for s in model._scripts:
                if s[:len(answer)] == answer and len(s) > len(answer):
                    return s[len(answer)]
            return model.generation_config.eos_token_id

        model._context, model._next = context, nxt
        return model


@pytest.mark.slow
@pytest.mark.parametrize("constrain", ["schema", "none"])
def test_transformers_decoding_goes_on_past_a_looping_list(tiny, constrain):
    from transformers import AutoTokenizer

    from distill.infer import Predictor, _HFBackend

    tok = AutoTokenizer.from_pretrained(tiny)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    looping = enc(HEAD + '"recipeIngredient": ["2 cups flour", ' + '"2 eggs", ' * 30)
    resumed = enc(RESUMED_AT) + enc(REST)
    model = _Scripted.build(tiny, [looping, resumed], enc("<|im_start|>assistant\n"))
    task = load_task("recipe")
    backend = _HFBackend(model, tok, task, max_new_tokens=400, batch=1, context=1024, constrain=constrain)
    with Predictor(backend, task, str(tiny), {}) as pred:
        (p,) = pred.predict(TEXTS[:1], progress=False)
    assert p.valid, (p.error, p.raw[-300:])
    assert p.stopped == "repetition" and p.resumed == 1 and p.finish_reason == "stop"
    assert p.output["recipeIngredient"] == ["2 cups flour", "2 eggs"]
    assert p.output["recipeInstructions"] == ["Whisk and fry 2 minutes a side."]


def test_llama_server_backend_resumes_with_the_prefix_as_prompt_tokens(tiny):
    """The server backend's plumbing with a scripted stream: the first stream loops, the resumed
    one is sent the prompt plus the closed prefix (free: no json_schema) within the token budget."""
    from transformers import AutoTokenizer

    from distill.infer import _ServerBackend

    tok = AutoTokenizer.from_pretrained(tiny)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    task = load_task("recipe")
    backend = _ServerBackend(client=None, task=task, max_new_tokens=400, concurrency=1, context=2048, tokenizer=tok,
                             name="llama.cpp")
    sent = []

    def stream(ids, n_predict, schema, think=False):
        sent.append((ids, n_predict, schema))
        if len(sent) == 1:
            return enc(LOOPING_INGREDIENTS), "repetition"
        return enc(REST), "stop"

    backend._stream = stream
    prompt = [1, 2, 3]
    messages = task.student_messages(TEXTS[0])
    backend._ids = lambda m: prompt
    text, finish, usage = backend.generate(messages)
    assert finish == "stop" and usage["resumed"] == 1 and usage["guard"] == "repetition"
    assert json.loads(text)["recipeInstructions"] == ["Whisk and fry 2 minutes a side."]
    (ids1, n1, schema1), (ids2, n2, schema2) = sent
    assert ids1 == prompt and schema1 == task.schema and n1 == 400
    assert ids2 == prompt + enc(RESUMED_AT) and schema2 is None and n2 == 400 - len(enc(RESUMED_AT))
    assert usage["tokens"] == enc(RESUMED_AT) + enc(REST)
    # --resume-loops 0: one stream, the answer ends at the loop as the guard left it.
    sent.clear()
    backend.resumes = 0
    text, finish, usage = backend.generate(messages)
    assert len(sent) == 1 and finish == "repetition" and usage["resumed"] == 0
