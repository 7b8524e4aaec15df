"""An Ollama Modelfile for a trained GGUF whose template renders the exact training prompt.

The Go template is not hand-written per model family: the saved training chat template is
rendered once with two sentinels in place of the system prompt and the input text, and the
sentinels are replaced by ``{{ .System }}`` and ``{{ .Prompt }}``. Go's text/template prints
those values verbatim, so for any input ``ollama run <name> "<text>"`` sends

    training_template(system = the task's student system prompt,
                      user   = the task's user template around <text>)

which is what the model saw in training (tests/test_extract.py checks this for a sample).
The task's user template is baked into TEMPLATE, so a user passes the raw text only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .io import StageError

_SYS = "\u241eDISTILL_SYSTEM\u241e"
_PROMPT = "\u241eDISTILL_PROMPT\u241e"
GO_ACTIONS = re.compile(r"{{.*?}}", re.S)


def gguf_adds_bos(gguf: Path) -> bool:
    """tokenizer.ggml.add_bos_token of a GGUF (llama.cpp and Ollama prepend BOS themselves when true)."""
    from gguf import GGUFReader

    f = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.add_bos_token")
    return bool(f.parts[f.data[0]][0]) if f is not None else False


def go_template(tok, chat_template: str, task, add_bos: bool) -> str:
    """The training chat template as an Ollama (Go) template over .System and .Prompt."""
    from distill.train.data import render_prompt

    messages = [{"role": "system", "content": _SYS}, {"role": "user", "content": task.render_user(_PROMPT)}]
    rendered = render_prompt(tok, messages, chat_template)
    if rendered.count(_SYS) != 1 or rendered.count(_PROMPT) != 1:
        raise StageError("the chat template does not show the system prompt and the input exactly once; "
                         "cannot express it as an Ollama template")
    if add_bos and tok.bos_token and rendered.startswith(tok.bos_token):
        rendered = rendered[len(tok.bos_token):]  # the runtime prepends BOS, as the GGUF says
    # Literal "{{" in the template text would start a Go action: print it through a string action.
    rendered = rendered.replace("{{", '{{ "{{" }}')
    return rendered.replace(_SYS, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}")


def stop_tokens(tok, dcfg: dict) -> list[str]:
    stops = []
    for t in (dcfg.get("eos_token"), tok.eos_token):
        if t and t not in stops:
            stops.append(t)
    return stops


def _quote(text: str, what: str) -> str:
    if '"""' in text:
        raise StageError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


@dataclass
class SavedPrompt:
    """The student prompt a run saved in distill_config.json: all of a task the Modelfile needs.

    05 writes the Modelfile where the task folders may not exist (the installed package on Colab).
    """
    student_system_prompt: str
    student_user_template: str

    def render_user(self, text: str) -> str:
        return self.student_user_template.replace("{text}", text)


def modelfile_text(gguf: Path, out_dir: Path, tok, dcfg: dict, task, context: int, max_new_tokens: int,
                   writer: str = "08_extract.py --export-ollama") -> str:
    rel = os.path.relpath(gguf.resolve(), out_dir.resolve())
    template = go_template(tok, dcfg["chat_template"], task, gguf_adds_bos(gguf))
    lines = [
        f"# Written by {writer}: the prompt format and system prompt the model was trained with.",
        "# Create and run:  ollama create student -f Modelfile  &&  ollama run student \"$(cat post.txt)\"",
        f"FROM {rel if rel.startswith('.') or os.path.isabs(rel) else './' + rel}",
        f"TEMPLATE {_quote(template, 'chat template')}",
        f"SYSTEM {_quote(task.student_system_prompt, 'system prompt')}",
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        f"PARAMETER num_ctx {context}",
        f"PARAMETER num_predict {max_new_tokens}",
    ]
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(tok, dcfg)]
    return "\n".join(lines) + "\n"


def render_go_template(template: str, system: str, prompt: str) -> str:
    """What Go's text/template prints for a template whose only actions are .System, .Prompt and
    string literals (all that go_template() emits; anything else is refused, not guessed)."""
    def action(m: re.Match) -> str:
        body = m.group(0)[2:-2].strip()
        if body == ".System":
            return system
        if body == ".Prompt":
            return prompt
        if re.fullmatch(r'"[^"\\]*"', body):
            return body[1:-1]
        raise ValueError(f"unsupported template action {m.group(0)!r}")

    return GO_ACTIONS.sub(action, template)
