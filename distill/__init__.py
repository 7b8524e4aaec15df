"""distill: teach a small language model to extract structured data from messy text.

One module per concern:
  io        paths, atomic writes, JSON/JSONL, stage manifests, run locks
  tasks     task folders (prompts, schema, styles, verification and scoring rules)
  llm       OpenAI-compatible client: concurrency, retries, response_format fallback
  source    the source datasets (kagglehub download, CSV cleaning)
  synth     stage 02: messy inputs written by the teacher
  labels    stage 03: reasoning + JSON parsing, repair, schema validation, verification
  dataset   stage 04: chat-format splits
  train     stage 05/06: training config and backends (unsloth, hf)
  export    GGUF export through llama.cpp's converter
  infer     running a trained student (adapter, merged, GGUF, server)
  evaluate  stage 07: scoring and reports
  server    starting and stopping a local llama.cpp server
"""

__version__ = "0.1.0"
