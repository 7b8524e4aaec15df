# The two commands a newcomer needs: `make demo` and `make test`.
PY := .venv/bin/python
SETUP_INPUTS := scripts/setup.sh scripts/install_llama_cpp.sh pyproject.toml requirements.txt requirements-dev.txt \
	requirements-finetune-cpu.txt

.PHONY: setup demo demo-small test test-fast clean-demo

setup: .venv/.setup-done

.venv/.setup-done: $(SETUP_INPUTS)
	bash scripts/setup.sh
	touch $@

# The pipeline on the bundled sample, offline, on CPU. TEACHER=<OpenAI-compatible URL>
# uses your own teacher instead of the bundled Qwen2.5-Coder-1.5B one.
demo: setup
	$(PY) scripts/demo.py $(if $(TEACHER),--teacher-url $(TEACHER))

# The same at toy size (what CI runs).
demo-small: setup
	$(PY) scripts/demo.py --small

# Lint (rules in pyproject.toml), then every test, including real llama.cpp servers and real training steps.
test: setup
	.venv/bin/ruff check .
	$(PY) -m pytest -q

# Skip the slow ones (real models and servers) while editing.
test-fast: setup
	.venv/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf demo_run
