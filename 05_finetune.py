#!/usr/bin/env python3
"""Stage 05: LoRA fine-tuning of the student on the chat dataset (Unsloth, or transformers+PEFT).

Loss is on the assistant turn only, with the model family's own chat template. Writes the
LoRA adapter, tokenizer, distill_config.json (training config + the task's prompts and the
chat template, so inference reproduces the training prompt), history.json and loss.png to
--save-dir; optionally a merged model (--save-merged) and a GGUF (--save-gguf, offline).

Usage:
    python 05_finetune.py                                               # quick run: 50 updates
    python 05_finetune.py --max-steps -1 --num-epochs 1 --save-gguf     # one full epoch + GGUF
    python 05_finetune.py --model-name path/to/model.gguf --lora-rank 16 --max-seq-length 1024
    python 05_finetune.py --backend hf --optimizer adamw_torch          # no Unsloth
    python 05_finetune.py --reasoning strip                              # train without <think> blocks
    python 05_finetune.py --dataset-dir data/04_dataset --save-dir coffee-chain   # a task with steps: trains the chain

--backend auto uses Unsloth wherever it imports (CUDA GPU, or its CPU mode), else
transformers+PEFT+TRL (Apple MPS, or Unsloth not installed).

Several GPUs (DDP): accelerate launch --num_processes N 05_finetune.py ... (or torchrun
--nproc_per_node N). --batch-size is per process, so one update sees N x batch x accumulation
examples; --backend auto then takes the plain backend, and only rank 0 writes --save-dir.
"""
from __future__ import annotations

import argparse
import os
import sys

from distill.cli import check_train_dirs, run
from distill.io import StageError
from distill.train.config import add_config_args, config_from_args


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    g = p.add_argument_group("chained tasks (steps: in task.yaml, e.g. coffee_order)")
    g.add_argument("--chain", choices=("auto", "on", "off"), default="auto",
                   help="auto = when the dataset's task has steps, train them one after another into "
                        "--save-dir/step1-.../, step2-.../ (each later step on the earlier step's generated "
                        "outputs); off = train one model on the whole task; on = fail if the task has no steps")
    g.add_argument("--chain-max-new-tokens", type=int, default=256,
                   help="token limit for a trained step when it writes the next step's training inputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    def _main() -> int:
        cfg = config_from_args(args)
        check_train_dirs(cfg)
        from distill.chain import chain_task_for, train_chain

        chained = chain_task_for(cfg.dataset_dir, args.chain)
        if chained is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise StageError(f"task {chained.name} trains a chain of steps, each on the one before's outputs: "
                             f"run it in one process, not under accelerate launch/torchrun")
        if chained is not None:
            chain = train_chain(chained, cfg, step_max_new_tokens=args.chain_max_new_tokens)
            print(f"05: chain {' -> '.join(s['name'] for s in chain['steps'])} of task {chained.name} "
                  f"in {chain['trained_s']:.0f}s -> {cfg.save_dir} (evaluate it: 07_evaluate.py --model {cfg.save_dir})")
            return 0
        from distill.train.core import run as train

        out = train(cfg)
        from distill.train.core import summary_line

        print(summary_line("05", out))
        return 0

    return run(_main)


if __name__ == "__main__":
    sys.exit(main())
