"""The one answer parser (distill.answers): the cases 03, 07, 08 and the check after training each handled."""
from __future__ import annotations

import pytest

from distill.answers import drop_reasoning_block, json_candidate, parse_answer, split_reasoning

# ------------------------------------------------------------------ JSON out of fences and prose (03's cases)

@pytest.mark.parametrize("content,expected,repaired", [
    ('{"a": 1}', {"a": 1}, False),
    ('```json\n{"a": 1}\n```', {"a": 1}, False),
    ('Sure! Here is the recipe:\n```\n{"a": 1}\n```\nEnjoy!', {"a": 1}, False),
    ('Here it is: {"a": 1} hope that helps', {"a": 1}, False),
    ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}, True),     # trailing commas
    ("{'a': 'x'}", {"a": "x"}, True),                             # single quotes
    ('```json\n{"a": 1}', {"a": 1}, False),                       # unclosed fence
    ('{"name": "a", "recipeIngredient": ["x", "y"', {"name": "a", "recipeIngredient": ["x", "y"]}, True),
    ("```JSON\n[1, 2]\n```", [1, 2], False),                      # a fenced value of any type
])
def test_parse_answer(content, expected, repaired):
    a = parse_answer(content)
    assert a.ok and (a.value, a.repaired) == (expected, repaired)


@pytest.mark.parametrize("content,reason", [
    ("", "empty"), ("   ", "empty"), (None, "empty"),
    ("I cannot find a recipe here.", "no_json"),
    ("{", "bad_json"),                        # json-repair makes {} of it: nothing safe to keep
    ('{"a": 1} {"b": 2}', "bad_json"),        # two objects: json-repair would make a list
])
def test_parse_answer_rejects(content, reason):
    a = parse_answer(content)
    assert a.error == reason and a.value is None and not a.repaired and a.detail


def test_the_candidate_runs_from_the_first_brace_to_the_last():
    assert json_candidate('x [{"a": 1}] y') == '{"a": 1}'
    assert json_candidate("  null ") == "null"
    assert parse_answer("null").ok and parse_answer("null").value is None
    assert parse_answer('"x"').value == "x"


# ------------------------------------------------------------------ reasoning (07's and 08's cases)

@pytest.mark.parametrize("reply,reasoning,value", [
    ('<think>title first</think>\n{"name": "a"}', "title first", {"name": "a"}),
    ('thinking without opening tag</think>{"name": "a"}', "thinking without opening tag", {"name": "a"}),
    ('<think>a</think>{"x": 1}<think>b</think>', "a\n\nb", {"x": 1}),
    ('<think>\n\n</think>\n\n{"x": 1}', None, {"x": 1}),                    # thinking off: an empty block
])
def test_reasoning_is_split_off_before_the_json(reply, reasoning, value):
    a = parse_answer(reply)
    assert a.ok and a.reasoning == reasoning and a.value == value and "think>" not in a.text


def test_a_reply_cut_off_while_thinking_has_no_answer():
    a = parse_answer('<think>the name is {"name": "a"}, then')
    assert a.error == "empty" and a.reasoning == 'the name is {"name": "a"}, then'


def test_split_reasoning_puts_a_lone_close_first_and_keeps_given_reasoning():
    assert split_reasoning("count eggs\nthen flour</think>\n\n{}") == ("count eggs\nthen flour", "{}")
    assert split_reasoning("<think>inline</think>ok", "field") == ("field\n\ninline", "ok")
    assert split_reasoning("before</think>ok", "field") == ("before\n\nfield", "ok")
    assert split_reasoning("  ok  ") == (None, "ok")


def test_drop_reasoning_block_reads_04s_assistant_turn_only():
    assert drop_reasoning_block('<think>\nbecause\n</think>\n\n{"name": "x"}') == '{"name": "x"}'
    assert drop_reasoning_block('{"name": "x"}') == '{"name": "x"}'
    # a tag later on is part of the answer's text, not reasoning
    assert drop_reasoning_block('{"step": "<think>x</think>"}') == '{"step": "<think>x</think>"}'
    assert drop_reasoning_block("<think>a</think>{}<think>b</think>") == "{}<think>b</think>"


# ------------------------------------------------------------------ per-caller options

@pytest.mark.parametrize("reply,expect,value,error", [
    ("null", "any", None, None),                       # 03 and training: the caller judges the value
    ("null", "object_or_null", {}, None),              # 07: "nothing here" is the empty answer
    ("null", "object", None, "not_object"),            # 08: only an object is a result
    ("[1, 2]", "object_or_null", None, "not_object"),
    ("[1, 2]", "any", [1, 2], None),
    ("{}", "object", {}, None),
])
def test_expect(reply, expect, value, error):
    a = parse_answer(reply, expect=expect)
    assert (a.value, a.error) == (value, error)


def test_without_repair_broken_json_is_an_error():
    a = parse_answer('{"a": 1, "b": [1, 2,],}', repair=False)
    assert a.error == "bad_json" and not a.repaired and a.value is None
    a = parse_answer('<think>r</think>\n```json\n{"a": 1}\n```', repair=False)   # training's own cases
    assert a.ok and a.value == {"a": 1}
    assert parse_answer("no json here", repair=False).error == "no_json"
