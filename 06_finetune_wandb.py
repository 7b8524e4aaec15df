#!/usr/bin/env python3
"""Stage 05 with Weights & Biases: config, per-step and eval metrics, loss plot, adapter artifact; sweeps.

Same training as 05_finetune.py (same flags). Each run logs its config, train/* metrics
per update, eval/* metrics on val.jsonl, the loss curve and the final adapter as an
artifact. Works with WANDB_MODE=offline (sync later with `wandb sync`) and with W&B
turned off (--wandb-mode disabled or WANDB_MODE=disabled): then nothing is logged.

Usage:
    python 06_finetune_wandb.py --wandb-project my-project
    python 06_finetune_wandb.py --wandb-project my-project --lora-rank 64 --learning-rate 1e-4
    WANDB_MODE=offline python 06_finetune_wandb.py --wandb-project my-project
    wandb sweep sweep.yaml && wandb agent <entity/project/sweep_id>      # agent runs this script
    python 06_finetune_wandb.py --wandb-project my-project --sweep-id <id> --sweep-count 10

Under a sweep the swept parameters (sweep.yaml, names = training flags in snake_case)
override the flags; each sweep run saves to <save-dir>/<run id>. The sweep minimises
eval/loss, the validation loss logged during training.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distill.cli import check_train_dirs, run
from distill.io import StageError
from distill.train.config import add_config_args, config_from_args, config_from_mapping


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Weights & Biases")
    g.add_argument("--wandb-project", "--wandb_project", default=os.environ.get("WANDB_PROJECT", "distill"),
                   help="W&B project (default: $WANDB_PROJECT, else 'distill')")
    g.add_argument("--wandb-entity", "--wandb_entity", default=os.environ.get("WANDB_ENTITY"),
                   help="W&B entity/team (default: $WANDB_ENTITY, else your default entity)")
    g.add_argument("--wandb-run-name", "--wandb_run_name", default=None, help="run name (default: W&B picks one)")
    g.add_argument("--wandb-mode", "--wandb_mode", choices=("online", "offline", "disabled"),
                   default=os.environ.get("WANDB_MODE") or None,
                   help="online, offline (sync later), or disabled (nothing logged) [default: $WANDB_MODE, else online]")
    g.add_argument("--sweep-id", "--sweep_id", default=None,
                   help="join this sweep as an agent (create it with `wandb sweep sweep.yaml`)")
    g.add_argument("--sweep-count", "--sweep_count", type=int, default=1, help="runs this agent does in the sweep")
    add_config_args(p)
    return p


def _train_one(args: argparse.Namespace, sweep: bool) -> dict:
    from distill.train.core import run as train
    from distill.train.tracking import NullTracker, WandbTracker

    base = config_from_args(args)
    if args.wandb_mode == "disabled":
        return train(base, NullTracker())
    import wandb

    wrun = wandb.init(project=args.wandb_project, entity=args.wandb_entity, name=args.wandb_run_name,
                      mode=args.wandb_mode, config=base.to_dict() if not sweep else None, job_type="train")
    tracker = WandbTracker(wrun)
    exit_code = 1
    try:
        # Under an agent wandb.config holds the sweep's parameters; flags give everything else.
        swept = {k: v for k, v in dict(wrun.config).items() if k in base.to_dict() and v != base.to_dict()[k]}
        cfg = config_from_mapping(swept, base) if swept else base
        if sweep or os.environ.get("WANDB_SWEEP_ID"):
            cfg = cfg.replace(save_dir=str(Path(cfg.save_dir) / wrun.id), output_dir=str(Path(cfg.output_dir) / wrun.id))
        wrun.config.update(cfg.to_dict(), allow_val_change=True)
        out = train(cfg, tracker)
        exit_code = 0
        return out
    finally:
        tracker.finish(exit_code)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    def _main() -> int:
        check_train_dirs(config_from_args(args))  # reject bad flags and folders before anything starts
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise StageError("06 runs in one process (each would start its own W&B run): train under "
                             "accelerate launch with 05_finetune.py")
        if args.sweep_id:
            if args.wandb_mode in ("disabled", "offline"):
                raise StageError("--sweep-id needs W&B online (the sweep controller is on the server): "
                                 "drop --wandb-mode/WANDB_MODE or train without a sweep")
            import wandb

            failures: list[str] = []

            def _agent_fn() -> None:
                try:
                    _train_one(args, sweep=True)
                except StageError as exc:  # one bad trial (e.g. out of memory) must not end the sweep
                    print(f"error: {exc}", file=sys.stderr)
                    failures.append(str(exc))

            wandb.agent(args.sweep_id, function=_agent_fn, count=args.sweep_count,
                        project=args.wandb_project, entity=args.wandb_entity)
            print(f"06: sweep {args.sweep_id}: {args.sweep_count - len(failures)} runs finished, {len(failures)} failed")
            return 0 if len(failures) < args.sweep_count else 1
        out = _train_one(args, sweep=False)
        from distill.train.core import summary_line

        print(summary_line("06", out))
        return 0

    return run(_main)


if __name__ == "__main__":
    sys.exit(main())
