"""Task folders: everything task-specific lives in ``tasks/<name>/`` as data.

A task folder holds ``task.yaml`` (documented in README, "Write your own task"),
Markdown prompts, the output JSON Schema, and optional sample data and
adversarial cases. ``task.yaml`` is read into pydantic models (:class:`TaskSpec`) that
forbid unknown keys and wrong types, then cross-checked: every field is a property of the
schema, every ``verify.source`` a field of the records, every user template has ``{text}``.
A typo is one line naming the file and the key, never a check silently switched off.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .io import TASKS_DIR, StageError, stable_hash
from .pages import REAL_STYLE
from .scoring import SCORE_METHODS

VERIFY_METHODS = ("text", "name", "minutes", "number", "count", "set_f1", "exact")


# --- the task.yaml schema ------------------------------------------------------------------
# One pydantic model per section. An unknown key (a typo such as ``nmae:`` or ``verfy:``),
# a missing key or a wrong type is a one-line error naming the file and the key, so a typo
# never switches a check off. Strict: the YAML string "3" is not the number 3.

class _Spec(BaseModel):
    # defer_build: the validators are built at the first load_task, not on import.
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class SourceSpec(_Spec):
    kaggle: Optional[str] = None
    parser: Optional[str] = None
    sample: Optional[str] = None
    generator: Optional[str] = None
    file: Optional[str] = None


class StyleSpec(_Spec):
    name: str
    weight: float = Field(gt=0)
    instructions: str
    empty: list[str] = []   # fields an input of this style must leave empty: it has nothing to extract
    # This style's own synthesis prompt (a file in the task folder), replacing synthesis.prompt:
    # for inputs that must not present the record the way the task's prompt asks (a text with
    # no recipe, where the record is only the topic).
    prompt: Optional[str] = None
    # The record fields this style shows the teacher, replacing synthesis.record_fields: what
    # the teacher is not shown it cannot write (no times for a style whose times must be empty).
    record_fields: Optional[list[str]] = None


class SynthesisSpec(_Spec):
    prompt: str
    styles: list[StyleSpec] = Field(min_length=1)
    record_fields: Optional[list[str]] = None


class PromptSpec(_Spec):
    prompt: str
    user_template: str


class StudentSpec(_Spec):
    system_prompt: str
    user_template: str


class VerifySpec(_Spec):
    source: Union[str, list[str]]
    method: Literal[VERIFY_METHODS]  # type: ignore[valid-type]
    min: Optional[float] = None
    tolerance: float = 0.0
    keywords: list[str] = []   # words that name this value in a text ("prep", "serves"): fields.stated_in_text

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        if not (isinstance(v, str) and v or isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)):
            raise ValueError(f"must be a record field name or a list of them (any may match), e.g. "
                             f"[servings, yield]; got {v!r}")
        return v


class FieldSpec(_Spec):
    verify: Optional[VerifySpec] = None
    required: bool = False
    grounded: Union[bool, str] = False
    score: Optional[Literal[SCORE_METHODS]] = None  # type: ignore[valid-type]
    weight: float = 1.0

    @field_validator("grounded", mode="before")
    @classmethod
    def _grounded(cls, v: Any) -> Any:
        if v not in (True, False, "paraphrase") or isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"must be true (items as written in the text), false, or paraphrase "
                             f"(reworded items such as steps); got {v!r}")
        return v


class StepSpec(_Spec):
    name: str
    system_prompt: str
    user_template: str
    target_template: Optional[str] = None


class TiersSpec(_Spec):
    field: str
    score_fields: list[str] = Field(min_length=1)
    bounds: dict[str, float] = Field(min_length=1)


class PriceCheckSpec(_Spec):
    menu: str
    items: str
    total: str
    tolerance: float = 0.01


class ReferenceMapSpec(_Spec):
    from_: str = Field(alias="from")
    convert: Optional[Literal["minutes"]] = None   # minutes -> ISO 8601 duration ("PT1H30M")


class PagesSpec(_Spec):
    type: str                       # the schema.org @type whose markup is a page's answer ("Recipe")
    max_chars: int = Field(default=7000, ge=200)   # the reader's window over long pages (distill.pages.focus)
    # sibling <stem>.json key -> output field: "title" or {from: prep_time, convert: minutes}
    reference: dict[str, Union[str, ReferenceMapSpec]] = {}
    markup_fields: dict[str, str] = {}   # output field -> markup property, where the names differ
    records_complete: bool = False  # the markup is a complete answer: 03 --label-from-record may use it


class TaskSpec(_Spec):
    name: str
    description: str
    schema_file: str = Field(alias="schema")
    student: StudentSpec
    fields: dict[str, Optional[FieldSpec]] = Field(min_length=1)
    source: Optional[SourceSpec] = None
    synthesis: Optional[SynthesisSpec] = None
    label: Optional[PromptSpec] = None
    adversarial: Optional[str] = None
    steps: Optional[list[StepSpec]] = None
    tiers: Optional[TiersSpec] = None
    stratify: Optional[str] = None
    price_check: Optional[PriceCheckSpec] = None
    pages: Optional[PagesSpec] = None


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model at a pydantic error location, to list the keys it allows."""
    tp: Any = TaskSpec
    parts = list(loc)
    while parts or not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            part = parts.pop(0)
            f = tp.model_fields.get(part) or next((x for x in tp.model_fields.values() if x.alias == part), None)
            if f is None:
                return None
            tp = f.annotation
            continue
        origin, args = get_origin(tp), [a for a in get_args(tp) if a is not type(None)]
        if origin in (list, dict) and parts:
            parts.pop(0)  # a list index or a dict key: go on with the item type
            tp = args[-1]
        elif args:  # Optional[X] / Union[...]: the model among the alternatives
            tp = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0])
        else:
            return None
    return tp


def _spec_error(where: str, exc: ValidationError) -> StageError:
    """The first problem of a task.yaml as one line, plus how many more there are."""
    # An unknown key first: a misspelt key also shows up as the right key missing.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    e, loc = errors[0], tuple(errors[0]["loc"])
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    parent = _loc(loc[:-1])
    at = f"{parent}: " if parent else ""
    if e["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        keys = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return StageError(f"{where}: {at}unknown key {loc[-1]!r} ({hint}allowed: {', '.join(keys) or '?'}){more}")
    if e["type"] == "missing":
        return StageError(f"{where}: {at}missing key {loc[-1]!r}{more}")
    msg = e["msg"].removeprefix("Value error, ")
    got = "" if e["type"] == "value_error" else f", got {e.get('input')!r}"
    return StageError(f"{where}: {_loc(loc)}: {msg}{got}{more}")


@dataclass(frozen=True)
class Style:
    name: str
    weight: float
    instructions: str
    # Fields an input of this style must leave empty (an "adversarial" style with nothing
    # to extract): a value there is invented, and ``required`` does not apply to them.
    empty: tuple[str, ...] = ()
    prompt: str | None = None                      # own synthesis prompt text (None: the task's)
    record_fields: tuple[str, ...] | None = None   # record fields shown to the teacher (None: the task's)


@dataclass(frozen=True)
class Step:
    """One model of a chained task: its own prompts; its target is rendered from the label.

    ``target_template`` (Jinja2 text, read from the task folder) turns the verified
    label into this step's answer; the last step has none: its answer is the label JSON.
    """
    name: str
    system_prompt: str
    user_template: str
    target_template: str | None = None

    def messages(self, text: str) -> list[dict]:
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.user_template.replace("{text}", text)}]

    def render_target(self, label: dict) -> str:
        if self.target_template is None:
            raise ValueError(f"step {self.name} has no target_template: its target is the label JSON")
        import jinja2  # a transformers dependency; only chained tasks need it

        env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                 keep_trailing_newline=False)
        return env.from_string(self.target_template).render(**label).strip()


@dataclass(frozen=True)
class FieldRule:
    name: str
    verify_source: str | tuple[str, ...] | None = None  # source-record field(s) to verify against; any may match
    verify_method: str | None = None      # one of VERIFY_METHODS
    verify_min: float | None = None       # threshold for text/set_f1 similarity (0-1)
    verify_tolerance: float = 0.0         # allowed absolute difference for minutes/number
    verify_keywords: tuple[str, ...] = ()  # words naming the value in a text: an empty label then is "omitted"
    required: bool = False                # an empty value rejects the label (<field>_missing)
    grounded: bool = False                # every extracted item must appear in the input text (07 counts them too)
    # Reworded items (steps): most content words of each item occur together in the text,
    # and there are no more items than the text has sentences and lines.
    grounded_paraphrase: bool = False
    score: str | None = None              # one of distill.scoring.SCORE_METHODS (07_evaluate.py)
    weight: float = 1.0


@dataclass
class Task:
    name: str
    dir: Path
    description: str
    schema: dict
    student_system_prompt: str
    student_user_template: str
    fields: dict[str, FieldRule]
    source: dict = field(default_factory=dict)
    synthesis_prompt: str | None = None
    record_fields: list[str] | None = None
    styles: list[Style] = field(default_factory=list)
    label_prompt: str | None = None
    label_user_template: str | None = None
    adversarial_path: Path | None = None
    extra: dict = field(default_factory=dict)   # steps / tiers / stratify for richer tasks
    steps: list[Step] = field(default_factory=list)  # chained tasks: models run one after another
    pages: dict = field(default_factory=dict)   # saved web pages: pages.type, max_chars, reference (distill.pages)

    def step_task(self, index: int) -> "Task":
        """This task as seen by one step's model: the step's prompts replace the student prompts."""
        import dataclasses

        st = self.steps[index]
        return dataclasses.replace(self, student_system_prompt=st.system_prompt, student_user_template=st.user_template)

    def style_empty(self, style: str | None) -> tuple[str, ...]:
        """The fields an input of this style must leave empty (its ``empty:`` list)."""
        return next((s.empty for s in self.styles if s.name == style), ())

    def tier_for(self, label: dict) -> str | None:
        """The tier the ``tiers:`` bounds give for the mean of the label's score fields."""
        t = self.extra.get("tiers")
        if not t:
            return None
        vals = [label.get(f) for f in t["score_fields"]]
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in vals):
            return None
        mean = sum(vals) / len(vals)
        for name, low in sorted(t["bounds"].items(), key=lambda kv: -kv[1]):
            if mean >= low:
                return name
        return None

    # --- prompts -----------------------------------------------------------------
    def render_user(self, text: str) -> str:
        """The student's user turn: identical at training, evaluation and extraction."""
        return self.student_user_template.replace("{text}", text)

    def student_messages(self, text: str) -> list[dict]:
        return [
            {"role": "system", "content": self.student_system_prompt},
            {"role": "user", "content": self.render_user(text)},
        ]

    def label_messages(self, text: str) -> list[dict]:
        if not self.label_prompt:
            raise StageError(f"task {self.name} has no label: section")
        return [
            {"role": "system", "content": self.label_prompt},
            {"role": "user", "content": self.label_user_template.replace("{text}", text)},
        ]

    def record_text(self, record: dict, fields: list[str] | tuple[str, ...] | None = None) -> str:
        """Render a source record for the teacher as 'key: value' lines (lists as bullets).

        ``fields``: the record fields to show (default: ``synthesis.record_fields``, else all but id)."""
        keys = fields or self.record_fields or [k for k in record if k != "id"]
        lines = []
        for k in keys:
            v = record.get(k)
            if v is None or v == [] or v == "":
                continue
            label = k.replace("_", " ")
            if isinstance(v, list):
                lines.append(f"{label}:")
                lines.extend(f"- {item}" for item in v)
            elif isinstance(v, dict):
                lines.append(f"{label}: {json.dumps(v, ensure_ascii=False)}")
            else:
                lines.append(f"{label}: {v}")
        return "\n".join(lines)

    def synthesis_messages(self, record: dict, style: Style) -> list[dict]:
        if not self.synthesis_prompt:
            raise StageError(f"task {self.name} has no synthesis: section")
        # A style may bring its own prompt and show fewer record fields (see StyleSpec).
        prompt = ((style.prompt or self.synthesis_prompt)
                  .replace("{style_instructions}", style.instructions.strip())
                  .replace("{record_text}", self.record_text(record, style.record_fields)))
        return [{"role": "user", "content": prompt}]

    def fingerprint(self) -> str:
        """Changes whenever a prompt, the schema or the styles change (cache keys)."""
        return stable_hash(self.schema, self.student_system_prompt, self.student_user_template,
                           self.synthesis_prompt, self.label_prompt, self.label_user_template,
                           [s.__dict__ for s in self.styles])

    def sample_path(self) -> Path | None:
        s = self.source.get("sample")
        return self.dir / s if s else None


def _read_text(task_dir: Path, rel: str, where: str) -> str:
    p = task_dir / rel
    if not p.is_file():
        raise StageError(f"{where}: file {p} not found")
    return p.read_text(encoding="utf-8").strip()


def tasks_root() -> Path:
    """Where tasks are found: $DISTILL_TASKS_DIR (extra tasks) or the bundled tasks/ folder."""
    return Path(os.environ.get("DISTILL_TASKS_DIR", TASKS_DIR))


def list_tasks() -> list[str]:
    roots = [tasks_root()] + ([TASKS_DIR] if tasks_root() != TASKS_DIR else [])
    names = set()
    for root in roots:
        if root.is_dir():
            names.update(p.parent.name for p in root.glob("*/task.yaml"))
    return sorted(names)


def load_task(name_or_path: str | os.PathLike) -> Task:
    """Load a task by name (``recipe``) or by folder path; validate it fully."""
    p = Path(name_or_path)
    if (p / "task.yaml").is_file():
        task_dir = p
    else:
        task_dir = next((r / str(name_or_path) for r in (tasks_root(), TASKS_DIR)
                         if (r / str(name_or_path) / "task.yaml").is_file()), None)
        if task_dir is None:
            raise StageError(f"unknown task {str(name_or_path)!r}; installed tasks: {', '.join(list_tasks()) or 'none'}")
    where = str(task_dir / "task.yaml")
    try:
        raw = yaml.safe_load((task_dir / "task.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StageError(f"{where}: invalid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict):
        raise StageError(f"{where}: expected a mapping of keys (name:, schema:, fields: ...), got {type(raw).__name__}")
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(where, exc) from None

    schema_path = task_dir / spec.schema_file
    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{where}: schema {schema_path} unreadable ({exc})") from exc
    import jsonschema  # imported here: only task loading needs it
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise StageError(f"{schema_path}: not a valid JSON Schema ({exc.message})") from exc
    properties = set(schema.get("properties") or {})

    def template(value: str, key: str, placeholders: tuple[str, ...] = ("{text}",)) -> str:
        for ph in placeholders:
            if ph not in value:
                raise StageError(f"{where}: {key} has no {ph}: without it the input never reaches the model")
        return value

    template(spec.student.user_template, "student.user_template")
    source = spec.source.model_dump(exclude_none=True) if spec.source else {}

    styles: list[Style] = []
    synthesis_prompt = record_fields = None
    if spec.synthesis:
        synthesis_prompt = template(_read_text(task_dir, spec.synthesis.prompt, f"{where}: synthesis.prompt"),
                                    f"synthesis.prompt ({spec.synthesis.prompt})",
                                    ("{record_text}", "{style_instructions}"))
        record_fields = spec.synthesis.record_fields
        styles = []
        for st in spec.synthesis.styles:
            own = None
            if st.prompt is not None:
                own = template(_read_text(task_dir, st.prompt, f"{where}: style {st.name!r}: prompt"),
                               f"style {st.name!r}: prompt ({st.prompt})", ("{record_text}", "{style_instructions}"))
            styles.append(Style(st.name, float(st.weight), st.instructions, tuple(st.empty), own,
                                tuple(st.record_fields) if st.record_fields is not None else None))
        if len({s.name for s in styles}) != len(styles):
            raise StageError(f"{where}: style names must be unique")
        if any(s.name == REAL_STYLE for s in styles):
            raise StageError(f"{where}: synthesis.styles: {REAL_STYLE!r} is reserved for the inputs that are a saved "
                             f"page's own text (01 --from-pages); name the style otherwise")

    label_prompt = label_user = None
    if spec.label:
        label_prompt = _read_text(task_dir, spec.label.prompt, f"{where}: label.prompt")
        label_user = template(spec.label.user_template, "label.user_template")

    fields: dict[str, FieldRule] = {}
    for fname, rule in spec.fields.items():
        rule = rule or FieldSpec()
        if fname not in properties:
            close = difflib.get_close_matches(fname, sorted(properties), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"properties: {', '.join(sorted(properties))}"
            raise StageError(f"{where}: fields.{fname}: not a property of {spec.schema_file} ({hint})")
        v = rule.verify
        if v is not None and v.keywords and v.method not in ("minutes", "count", "number"):
            raise StageError(f"{where}: fields.{fname}.verify.keywords: only minutes, count and number read them "
                             f"(method here: {v.method})")
        fields[fname] = FieldRule(
            name=fname,
            verify_source=(v.source if isinstance(v.source, str) else tuple(v.source)) if v else None,
            verify_method=v.method if v else None,
            verify_min=v.min if v else None,
            verify_tolerance=float(v.tolerance) if v else 0.0,
            verify_keywords=tuple(v.keywords) if v else (),
            required=rule.required,
            grounded=rule.grounded is True,
            grounded_paraphrase=rule.grounded == "paraphrase",
            score=rule.score,
            weight=float(rule.weight),
        )
    for st in styles:
        unknown = [f for f in st.empty if f not in fields]
        if unknown:
            raise StageError(f"{where}: style {st.name!r}: empty: {unknown} are not fields of this task "
                             f"(fields: {', '.join(fields)})")
    _check_record_fields(task_dir, where, source, fields, record_fields, styles)

    steps = _load_steps(task_dir, where, spec.steps)
    if spec.tiers:
        unknown = [f for f in [spec.tiers.field, *spec.tiers.score_fields] if f not in properties]
        if unknown:
            raise StageError(f"{where}: tiers: {unknown} are not properties of {spec.schema_file}")
    if spec.price_check and not (task_dir / spec.price_check.menu).is_file():
        raise StageError(f"{where}: price_check.menu {spec.price_check.menu} not found in {task_dir}")

    pages: dict = {}
    if spec.pages:
        pages = spec.pages.model_dump(by_alias=True)
        for key in (*pages["reference"], *pages["markup_fields"]):
            if key not in fields:
                raise StageError(f"{where}: pages: {key!r} is not a field of this task (fields: {', '.join(fields)})")

    return Task(
        name=spec.name, dir=task_dir, description=spec.description, schema=schema,
        student_system_prompt=_read_text(task_dir, spec.student.system_prompt, f"{where}: student.system_prompt"),
        student_user_template=spec.student.user_template,
        fields=fields, source=source, synthesis_prompt=synthesis_prompt, record_fields=record_fields,
        styles=styles, label_prompt=label_prompt, label_user_template=label_user,
        adversarial_path=(task_dir / spec.adversarial) if spec.adversarial else None,
        extra={k: raw[k] for k in ("steps", "tiers", "stratify", "price_check") if k in raw},
        steps=steps, pages=pages,
    )


def _check_record_fields(task_dir: Path, where: str, source: dict, fields: dict[str, FieldRule],
                         record_fields: list[str] | None, styles: list[Style] = ()) -> None:
    """Every ``verify.source`` and ``record_fields`` entry (synthesis's, a style's) must be a field of the records.

    The fields come from the source parser (distill.source.RECORD_FIELDS) or, for the
    generic csv/jsonl parsers, from the task's own file. Without a parser (records come
    from whatever file 02 is given) or a file to read there is nothing to check against.
    """
    from . import source as S

    parser = source.get("parser")
    if parser is None:
        return
    if parser not in S.PARSERS:
        raise StageError(f"{where}: source.parser {parser!r} is not a parser; choose one of: {', '.join(S.PARSERS)}")
    rel = source.get("file") or source.get("sample")
    have = S.record_fields(parser, task_dir / rel if rel else None)
    if have is None:
        return
    wanted = [(f"fields.{r.name}.verify.source", s) for r in fields.values()
              for s in ([r.verify_source] if isinstance(r.verify_source, str) else r.verify_source or ())]
    wanted += [("synthesis.record_fields", s) for s in record_fields or ()]
    wanted += [(f"style {st.name!r}: record_fields", s) for st in styles for s in st.record_fields or ()]
    for key, name in wanted:
        if name not in have:
            close = difflib.get_close_matches(name, sorted(have), n=1)
            raise StageError(f"{where}: {key}: {name!r} is not a field of the {parser} records"
                             + (f" (did you mean {close[0]!r}?)" if close else f" (fields: {', '.join(sorted(have))})"))


def _load_steps(task_dir: Path, where: str, raw_steps: list[StepSpec] | None) -> list[Step]:
    if raw_steps is None:
        return []
    if len(raw_steps) < 2:
        raise StageError(f"{where}: steps must be a list of at least two steps (one model per step)")
    steps = []
    for i, st in enumerate(raw_steps):
        w = f"{where}: steps[{i}]"
        last = i == len(raw_steps) - 1
        if last and st.target_template is not None:
            raise StageError(f"{w}: the last step answers with the label JSON; drop its target_template")
        if not last and st.target_template is None:
            raise StageError(f"{w}: a step before the last needs target_template (how its answer is made from the label)")
        tmpl = _read_text(task_dir, st.target_template, f"{w}.target_template") if not last else None
        if tmpl is not None:
            import jinja2

            try:
                jinja2.Environment().parse(tmpl)
            except jinja2.TemplateSyntaxError as exc:
                raise StageError(f"{w}.target_template: Jinja2 syntax error line {exc.lineno}: {exc.message}") from exc
        user = st.user_template
        if "{text}" not in user:
            raise StageError(f"{where}: steps[{i}].user_template has no {{text}}: "
                             f"without it the input never reaches the model")
        steps.append(Step(st.name, _read_text(task_dir, st.system_prompt, f"{w}.system_prompt"), user, tmpl))
    if len({s.name for s in steps}) != len(steps):
        raise StageError(f"{where}: step names must be unique")
    return steps


def describe_tasks() -> list[dict]:
    """One line of facts per installed task (for --list-tasks and ``python -m distill.tasks``)."""
    out = []
    for name in list_tasks():
        try:
            t = load_task(name)
        except StageError as exc:
            out.append({"name": name, "error": str(exc)})
            continue
        src = t.source.get("kaggle") or t.source.get("file") or t.source.get("sample") or "-"
        out.append({"name": name, "description": t.description, "source": src,
                    "steps": [s.name for s in t.steps], "fields": len(t.fields), "styles": len(t.styles),
                    "adversarial": t.adversarial_path.name if t.adversarial_path else None})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m distill.tasks``: list installed tasks; ``python -m distill.tasks NAME``: check one."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv:
        try:
            t = load_task(argv[0])
        except StageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{t.name}: ok ({len(t.fields)} fields, {len(t.styles)} styles"
              + (f", steps {' -> '.join(s.name for s in t.steps)}" if t.steps else "") + ")")
        return 0
    for d in describe_tasks():
        if "error" in d:
            print(f"{d['name']:<16} BROKEN: {d['error']}")
            continue
        chain = f"  steps: {' -> '.join(d['steps'])}" if d["steps"] else ""
        print(f"{d['name']:<16} {d['description']}\n{'':<16} source: {d['source']}{chain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
