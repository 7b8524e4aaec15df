"""distill: teach a small language model to extract structured data from messy text.

One module per concern:
  io        paths, atomic writes, JSON/JSONL, stage manifests, run locks
  tasks     task folders (prompts, schema, styles, verification and scoring rules)
  llm       OpenAI-compatible client: concurrency, retries, response_format fallback
  source    the source datasets (kagglehub download, CSV cleaning)
  pages     saved web pages: the reader, schema.org markup, references, 01 --from-pages
  synth     stage 02: messy inputs written by the teacher
  answers   the one answer parser: reasoning, JSON out of fences and prose, safe repair
  labels    stage 03: teacher replies to labels: schema validation, verification
  dataset   stage 04: chat-format splits
  fields    field normalisation and fuzzy comparison (shared by 03 and 07)
  menu      the coffee_order task's record generator (orders drawn from a menu)
  train     stage 05/06: training config, data, and backends (unsloth, hf), tracking
  chain     two-step tasks: train step 1, run it, train step 2 on its outputs
  export    GGUF export through llama.cpp's converter
  llamacpp  the llama.cpp toolchain: llama-server, converter, quantizer, shipped GGUFs
  infer     running a model (adapter, merged, GGUF, OpenAI-compatible server)
  constrain schema-constrained decoding and the loop guard
  documents reading inputs for 08 (text, Markdown, HTML without scripts or JSON-LD)
  ollama    Modelfile export
  evaluate  stage 07: scoring, reports, plots
  review    the review.html page of 07 and 08
  cli       shared flags and the one-line error wrapper

The module map and the data flow through the stage folders: docs/architecture.md.
"""

__version__ = "0.1.0"
