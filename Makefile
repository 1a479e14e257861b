# Every command the README shows is a target here. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAMPLE := data/sample

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint format sample-data train convert model notebook

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-lambda.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(SAM_VENV)/.installed: requirements-deploy.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-deploy.txt
	touch $@

setup: $(VENV)/.installed $(SAM_VENV)/.installed ## create .venv (and .venv-sam) from the pinned requirements

test: setup ## run the whole test suite (what CI runs)
	$(PY) -m pytest

test-fast: setup ## run the tests not marked slow
	$(PY) -m pytest -m "not slow"

lint: setup ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# ---- training pipeline -------------------------------------------------------------------------
sample-data: $(VENV)/.installed ## draw the seeded 6-class sample dataset into data/sample
	$(PY) scripts/make_sample_data.py --out $(SAMPLE)

train: sample-data ## Keras Tuner search + final fit + evaluation on the sample data -> runs/train
	$(PY) train.py --data $(SAMPLE) --out runs/train

convert: ## Keras -> TFLite with the parity check (QUANT=float32|float16|dynamic|int8)
	$(PY) convert.py --model-dir runs/train --data $(SAMPLE) --quantization $(or $(QUANT),float16)

model: train ## rebuild the bundled model in model/ reproducibly (sample data, default budget)
	$(PY) convert.py --model-dir runs/train --data $(SAMPLE) --quantization float16 --bundle model

notebook: $(VENV)/.installed ## execute notebook.ipynb in place on the sample data
	$(PY) scripts/run_notebook.py notebook.ipynb
