# The two commands the README opens with. Both create .venv on first use.
#   make demo   set up, then run every trainer's short demo on built-in data (outputs under runs/demo/)
#   make test   set up with the test extras, then lint (ruff check + format --check) and run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
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

demo: $(VENV)/.installed-demo
	$(VENV)/bin/genai-train demo

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)
