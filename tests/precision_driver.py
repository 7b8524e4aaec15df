"""Run one training (distill.train.core.run) with the bf16 detector forced, and report dtypes as JSON.

Used by tests/test_train_precision.py in a subprocess per backend (Unsloth patches
transformers on import). Argument: a JSON object with ``config`` (TrainConfig fields) and
``force`` ("bf16": the CPU is said to have fast bfloat16; "none": it is said to have none).
The last stdout line is ``PRECISION_RESULT {...}``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from distill.train import core, precision
from distill.train.config import TrainConfig


def main() -> int:
    spec = json.loads(sys.argv[1])
    if spec["force"] == "bf16":
        precision.cpu_bf16_instructions = lambda: (True, "test: bfloat16 said to be native")
        precision.cpu_bf16 = lambda: (True, "test: bfloat16 said to be fast")
    else:
        precision.cpu_bf16_instructions = lambda: (False, "test: no bfloat16 here")
        precision.cpu_bf16 = lambda: (False, "test: no bfloat16 here")

    seen: dict[str, set[str]] = {"frozen": set(), "lora": set()}

    def record(module, args, output):
        # training forwards only (not evaluation or the inference test)
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            seen["lora" if module.weight.requires_grad else "frozen"].add(str(output.dtype))

    torch.nn.modules.module.register_module_forward_hook(record)
    captured = {}
    build = core.build_trainer

    def build_and_keep(*a, **kw):
        captured["trainer"] = build(*a, **kw)
        return captured["trainer"]

    core.build_trainer = build_and_keep
    cfg = TrainConfig(**spec["config"])
    out = core.run(cfg)
    trainer = captured["trainer"]
    model = trainer.model
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    state_dtypes = {str(v.dtype) for st in opt.state.values() for v in st.values()
                    if isinstance(v, torch.Tensor) and v.is_floating_point()}
    params = dict(model.named_parameters())
    result = {
        "precision": json.loads((Path(cfg.save_dir) / "distill_config.json").read_text())["precision"],
        "losses": [h["loss"] for h in out["history"] if "loss" in h],
        "matmul_out_dtypes": {k: sorted(v) for k, v in seen.items()},
        "lora_dtypes": sorted({str(p.dtype) for n, p in params.items() if "lora_" in n}),
        "base_dtypes": sorted({str(p.dtype) for n, p in params.items() if "lora_" not in n}),
        "optimizer_state_dtypes": sorted(state_dtypes),
        "optimizer_state_tensors": sum(len(st) for st in opt.state.values()),
        # LoRA B starts at zero in both backends, so non-zero B means the updates reached the weights
        "lora_B_changed": bool(params) and all(float(p.detach().abs().sum()) > 0 for n, p in params.items()
                                               if "lora_B" in n),
        "trainer_bf16": bool(trainer.args.bf16),
        "summary": core.summary_line("05", out),
    }
    print("PRECISION_RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
