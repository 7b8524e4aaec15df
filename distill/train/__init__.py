"""Stage 05/06 training: TrainConfig (config), chat data and label masks (data), model resolution
(models), the run (core), W&B tracking (tracking) and the two backends (hf_backend, unsloth_backend)."""
