"""Task folders: everything task-specific lives in ``tasks/<name>/`` as data.

A task folder holds ``task.yaml`` (documented in README, "Write your own task"),
Markdown prompts, the output JSON Schema, and optional sample data and
adversarial cases. Unknown keys are an error so a typo never goes unnoticed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import TASKS_DIR, StageError, stable_hash

VERIFY_METHODS = {"text", "name", "minutes", "number", "count", "set_f1", "exact"}
SCORE_METHODS = {"text", "exact", "minutes", "number", "list_f1", "set_f1", "mae"}

# Allowed keys per section: (required, optional).
_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "": ({"name", "description", "schema", "student", "fields"},
         {"source", "synthesis", "label", "adversarial", "steps", "tiers", "stratify", "price_check"}),
    "source": (set(), {"kaggle", "parser", "sample", "generator", "file"}),
    "synthesis": ({"prompt", "styles"}, {"record_fields"}),
    "style": ({"name", "weight", "instructions"}, set()),
    "label": ({"prompt", "user_template"}, set()),
    "student": ({"system_prompt", "user_template"}, set()),
    "field": (set(), {"verify", "grounded", "score", "weight"}),
    "verify": ({"source", "method"}, {"min", "tolerance"}),
    "step": ({"name", "system_prompt", "user_template"}, {"target_template"}),
    "tiers": ({"field", "score_fields", "bounds"}, set()),
    "price_check": ({"menu", "items", "total"}, {"tolerance"}),
}


def _check_keys(section: str, where: str, obj: Any) -> None:
    if not isinstance(obj, dict):
        raise StageError(f"{where}: expected a mapping, got {type(obj).__name__}")
    required, optional = _KEYS[section]
    unknown = set(obj) - required - optional
    if unknown:
        raise StageError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(required | optional)}")
    missing = required - set(obj)
    if missing:
        raise StageError(f"{where}: missing key(s) {sorted(missing)}")


@dataclass(frozen=True)
class Style:
    name: str
    weight: float
    instructions: str


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
    grounded: bool = False                # every extracted item must appear in the input text
    score: str | None = None              # one of SCORE_METHODS (07_evaluate.py)
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

    def step_task(self, index: int) -> "Task":
        """This task as seen by one step's model: the step's prompts replace the student prompts."""
        import dataclasses

        st = self.steps[index]
        return dataclasses.replace(self, student_system_prompt=st.system_prompt, student_user_template=st.user_template)

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

    def record_text(self, record: dict) -> str:
        """Render a source record for the teacher as 'key: value' lines (lists as bullets)."""
        keys = self.record_fields or [k for k in record if k != "id"]
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
        prompt = (self.synthesis_prompt
                  .replace("{style_instructions}", style.instructions.strip())
                  .replace("{record_text}", self.record_text(record)))
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
        raise StageError(f"{where}: invalid YAML ({exc})") from exc
    _check_keys("", where, raw)

    schema_path = task_dir / raw["schema"]
    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{where}: schema {schema_path} unreadable ({exc})") from exc
    import jsonschema  # imported here: only task loading needs it
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise StageError(f"{schema_path}: not a valid JSON Schema ({exc.message})") from exc

    student = raw["student"]
    _check_keys("student", f"{where}: student", student)

    source = raw.get("source") or {}
    _check_keys("source", f"{where}: source", source)

    styles: list[Style] = []
    synthesis_prompt = record_fields = None
    if "synthesis" in raw:
        syn = raw["synthesis"]
        _check_keys("synthesis", f"{where}: synthesis", syn)
        synthesis_prompt = _read_text(task_dir, syn["prompt"], f"{where}: synthesis.prompt")
        record_fields = syn.get("record_fields")
        for i, st in enumerate(syn["styles"]):
            _check_keys("style", f"{where}: synthesis.styles[{i}]", st)
            if not (isinstance(st["weight"], (int, float)) and st["weight"] > 0):
                raise StageError(f"{where}: style {st['name']!r} needs a positive weight")
            styles.append(Style(st["name"], float(st["weight"]), st["instructions"]))
        if len({s.name for s in styles}) != len(styles):
            raise StageError(f"{where}: style names must be unique")

    label_prompt = label_user = None
    if "label" in raw:
        _check_keys("label", f"{where}: label", raw["label"])
        label_prompt = _read_text(task_dir, raw["label"]["prompt"], f"{where}: label.prompt")
        label_user = raw["label"]["user_template"]

    fields: dict[str, FieldRule] = {}
    for fname, rule in (raw["fields"] or {}).items():
        rule = rule or {}
        _check_keys("field", f"{where}: fields.{fname}", rule)
        v = rule.get("verify")
        if v is not None:
            _check_keys("verify", f"{where}: fields.{fname}.verify", v)
            if v["method"] not in VERIFY_METHODS:
                raise StageError(f"{where}: fields.{fname}.verify.method {v['method']!r} not in {sorted(VERIFY_METHODS)}")
            src = v["source"]
            if not (isinstance(src, str) and src or isinstance(src, list) and src
                    and all(isinstance(x, str) and x for x in src)):
                raise StageError(f"{where}: fields.{fname}.verify.source must be a record field name or a "
                                 f"list of them (any may match), e.g. [servings, yield]; got {src!r}")
        score = rule.get("score")
        if score is not None and score not in SCORE_METHODS:
            raise StageError(f"{where}: fields.{fname}.score {score!r} not in {sorted(SCORE_METHODS)}")
        fields[fname] = FieldRule(
            name=fname,
            verify_source=(v["source"] if isinstance(v["source"], str) else tuple(v["source"])) if v else None,
            verify_method=v["method"] if v else None,
            verify_min=v.get("min") if v else None,
            verify_tolerance=float(v.get("tolerance", 0)) if v else 0.0,
            grounded=bool(rule.get("grounded", False)),
            score=score,
            weight=float(rule.get("weight", 1.0)),
        )

    steps = _load_steps(task_dir, where, raw.get("steps"))
    if "tiers" in raw:
        t = raw["tiers"]
        _check_keys("tiers", f"{where}: tiers", t)
        if not (isinstance(t["bounds"], dict) and t["bounds"]
                and all(isinstance(v, (int, float)) for v in t["bounds"].values())):
            raise StageError(f"{where}: tiers.bounds must map tier names to lower bounds, e.g. {{high: 7, low: 0}}")
        if not (isinstance(t["score_fields"], list) and t["score_fields"]):
            raise StageError(f"{where}: tiers.score_fields must be a non-empty list of field names")
    if "stratify" in raw and not isinstance(raw["stratify"], str):
        raise StageError(f"{where}: stratify must be one field name (e.g. tier)")
    if "price_check" in raw:
        _check_keys("price_check", f"{where}: price_check", raw["price_check"])
        if not (task_dir / raw["price_check"]["menu"]).is_file():
            raise StageError(f"{where}: price_check.menu {raw['price_check']['menu']} not found in {task_dir}")

    adv = raw.get("adversarial")
    return Task(
        name=raw["name"], dir=task_dir, description=raw["description"], schema=schema,
        student_system_prompt=_read_text(task_dir, student["system_prompt"], f"{where}: student.system_prompt"),
        student_user_template=student["user_template"],
        fields=fields, source=source, synthesis_prompt=synthesis_prompt, record_fields=record_fields,
        styles=styles, label_prompt=label_prompt, label_user_template=label_user,
        adversarial_path=(task_dir / adv) if adv else None,
        extra={k: raw[k] for k in ("steps", "tiers", "stratify", "price_check") if k in raw},
        steps=steps,
    )


def _load_steps(task_dir: Path, where: str, raw_steps: Any) -> list[Step]:
    if raw_steps is None:
        return []
    if not isinstance(raw_steps, list) or len(raw_steps) < 2:
        raise StageError(f"{where}: steps must be a list of at least two steps (one model per step)")
    steps = []
    for i, st in enumerate(raw_steps):
        w = f"{where}: steps[{i}]"
        _check_keys("step", w, st)
        last = i == len(raw_steps) - 1
        if last and "target_template" in st:
            raise StageError(f"{w}: the last step answers with the label JSON; drop its target_template")
        if not last and "target_template" not in st:
            raise StageError(f"{w}: a step before the last needs target_template (how its answer is made from the label)")
        tmpl = _read_text(task_dir, st["target_template"], f"{w}.target_template") if not last else None
        if tmpl is not None:
            import jinja2

            try:
                jinja2.Environment().parse(tmpl)
            except jinja2.TemplateSyntaxError as exc:
                raise StageError(f"{w}.target_template: Jinja2 syntax error line {exc.lineno}: {exc.message}") from exc
        steps.append(Step(st["name"], _read_text(task_dir, st["system_prompt"], f"{w}.system_prompt"),
                          st["user_template"], tmpl))
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
