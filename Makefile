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

$(VENV)/.installed: requirements.txt requirements-train.txt requirements-lambda.txt
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
	$(PY) -m imgclf.pipeline.sample_data --out $(SAMPLE)

train: sample-data ## Keras Tuner search + final fit + evaluation on the sample data -> runs/train
	$(PY) train.py --data $(SAMPLE) --out runs/train

convert: ## Keras -> TFLite with the parity check (QUANT=float32|float16|dynamic|int8)
	$(PY) convert.py --model-dir runs/train --data $(SAMPLE) --quantization $(or $(QUANT),float16)

model: sample-data ## rebuild the bundled model/ from scratch (sample data, default budget, seed 0)
	$(PY) train.py --data $(SAMPLE) --out runs/model --overwrite
	$(PY) convert.py --model-dir runs/model --data $(SAMPLE) --quantization float16 --out model

notebook: $(VENV)/.installed ## execute notebook.ipynb on the sample data into runs/notebook.ipynb
	$(PY) scripts/run_notebook.py notebook.ipynb --out runs/notebook.ipynb

# ---- serving -----------------------------------------------------------------------------------
.PHONY: test-lambda-venv
test-lambda-venv: $(VENV)/.installed ## serving tests in a clean venv from requirements-lambda.txt alone
	$(PY) -m pytest tests/serving/test_lambda_venv.py

# ---- benchmarks (README "Benchmarks", docs/benchmarks.md) ---------------------------------------
.PHONY: bench bench-docs
BUDGET ?= full

bench: $(VENV)/.installed ## handler vs Keras: latency, floor, cold start, size, Locust, cost (BUDGET=tiny)
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	$(PY) -m benchmarks --budget $(BUDGET) --out reports/bench

bench-docs: $(VENV)/.installed ## the committed run: docs/benchmarks.{md,json}, then README's table from it
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	$(PY) -m benchmarks --budget full --out docs/benchmarks
	$(PY) -m benchmarks.report --readme --json docs/benchmarks.json

# ---- local stack and load testing (README "Local stack", "Load testing") -----------------------
.PHONY: run load-test
PORT ?= 3000
WORKERS ?= 2
API_URL ?= http://127.0.0.1:$(PORT)
USERS ?= 10
SPAWN_RATE ?= 5
DURATION ?= 30s

run: $(VENV)/.installed ## the local stack: API on 127.0.0.1:3000 (PORT, WORKERS); Ctrl-C stops it all
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	$(PY) -m imgclf.local --port $(PORT) --workers $(WORKERS) --data-dir $(SAMPLE)

load-test: $(VENV)/.installed ## Locust, headless, against API_URL (USERS, SPAWN_RATE, DURATION) -> reports/
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	mkdir -p reports
	SAMPLE_DIR=$(SAMPLE) $(VENV)/bin/locust -f locustfile.py --headless --only-summary \
		--host $(API_URL) -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
		--csv reports/locust --html reports/locust.html

# ---- registry and retraining (README "Registry and retraining") --------------------------------
.PHONY: registry jobs retrain test-retrain
# The local stack's S3 endpoint (make run) with moto's dummy credentials; LOCAL_AWS= talks to AWS.
LOCAL_AWS ?= AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_ACCESS_KEY_ID=testing \
	AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
REGISTRY_URI ?= s3://imgclf-models/models

registry: $(VENV)/.installed ## registry CLI (local stack): ARGS="list | show 2 | promote 2 | rollback"
	$(LOCAL_AWS) MODEL_REGISTRY_URI=$(REGISTRY_URI) $(PY) -m imgclf.registry $(or $(ARGS),list)

jobs: $(VENV)/.installed ## the training jobs of the local stack, their outcome, and the new images pending
	$(LOCAL_AWS) $(PY) -m imgclf.retrain list

retrain: $(VENV)/.installed ## ask the local stack to retrain now (MODE=warm|full) via incoming/_retrain/
	$(LOCAL_AWS) $(PY) -m imgclf.retrain request --mode $(or $(MODE),warm)

test-retrain: $(VENV)/.installed ## registry, ingestion and retraining tests (real training on tiny data)
	$(PY) -m pytest tests/core/test_registry.py tests/retrain tests/stack/test_retrain_e2e.py

# ---- deploy (AWS SAM; the AWS steps need Docker and AWS credentials: README "Deploy to AWS") ----
.PHONY: validate-template sam-build sam-invoke sam-api deploy publish-model test-deployed \
	seed-data retrain-image-uri delete
# The stack name and region as the first (guided) `sam deploy` saved them in samconfig.toml.
DEPLOY_SETTING = $(PY) -c 'import sys, tomllib; print(tomllib.load(open("samconfig.toml", "rb"))["default"]["deploy"]["parameters"][sys.argv[1]])'
STACK = $$($(DEPLOY_SETTING) stack_name)
REGION = $$($(DEPLOY_SETTING) region)
STACK_OUTPUT = AWS_DEFAULT_REGION=$(REGION) $(PY) scripts/stack_output.py $(STACK)

validate-template: $(SAM_VENV)/.installed ## sam validate --lint, cfn-lint and hadolint (offline)
	SAM_CLI_TELEMETRY=0 $(SAM) validate --lint --region us-east-1
	$(SAM_VENV)/bin/cfn-lint --regions us-east-1 -- template.yaml
	$(SAM_VENV)/bin/hadolint Dockerfile

sam-build: $(SAM_VENV)/.installed ## build the serve and train images with Docker (sam build)
	$(SAM) build

sam-invoke: sam-build ## sam local invoke PredictFunction -e events/EVENT.json (Docker; bundled model)
	MODEL_REGISTRY_URI= $(SAM) local invoke PredictFunction -e events/$(or $(EVENT),predict_http_api_jpeg).json

sam-api: sam-build ## sam local start-api on 127.0.0.1:3000 (Docker; bundled model, no auth)
	MODEL_REGISTRY_URI= $(SAM) local start-api

deploy: $(VENV)/.installed $(SAM_VENV)/.installed ## sam build + sam deploy (guided the first time) + publish-model
	$(SAM) build
	if grep -q '^stack_name' samconfig.toml; then $(SAM) deploy; else $(SAM) deploy --guided; fi
	$(MAKE) publish-model

publish-model: $(VENV)/.installed ## publish model/ to the deployed registry and make it live, unless one is
	scripts/publish_model.sh $(STACK) $(REGION)

test-deployed: $(VENV)/.installed ## tests/deploy/test_deploy_integration.py against the deployed API
	AWS_SAM_STACK_NAME=$(STACK) AWS_DEFAULT_REGION=$(REGION) $(PY) -m pytest tests/deploy/test_deploy_integration.py

seed-data: $(VENV)/.installed $(if $(DATA),,sample-data) ## seed the deployed data bucket's train/ + test/ from DATA
	AWS_DEFAULT_REGION=$(REGION) $(PY) -c 'import sys; from pathlib import Path; \
	from imgclf.retrain.ingest import seed_data; from imgclf.layout import data_store; \
	print(seed_data(data_store(sys.argv[1]), Path(sys.argv[2])))' \
	"$$($(STACK_OUTPUT) DataBucketName)" $(or $(DATA),$(SAMPLE))

retrain-image-uri: $(VENV)/.installed ## print RetrainFunction's image URI (parameter SageMakerImageUri)
	AWS_DEFAULT_REGION=$(REGION) $(PY) -c 'import sys, boto3; \
	print(boto3.client("lambda").get_function(FunctionName=sys.argv[1])["Code"]["ImageUri"])' \
	"$$($(STACK_OUTPUT) RetrainFunctionArn)"

delete: $(SAM_VENV)/.installed ## delete the stack; its data and model buckets are kept
	$(SAM) delete --stack-name $(STACK) --region $(REGION)
