# Every command the README shows is a target here. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAMPLE := data/sample
PHOTOS := data/photos

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint format sample-data photo-data train convert model pretrained notebook

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# Two steps, so that `make run` serves within a minute: the serving set and the local stack first
# (about 250 MB), the training stack and the tools (about 2.4 GB, TensorFlow) only when needed.
# --no-compile: byte-compiling every installed module took 37 of this step's 58 s; Python compiles
# the few modules the stack imports on first use instead (and caches them).
$(VENV)/.stack: requirements-stack.txt requirements-lambda.txt
	@echo "==> [setup 1/2] $(VENV): the serving set and the local stack (about 250 MB)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-compile --progress-bar on -r requirements-stack.txt
	touch $@

$(VENV)/.installed: $(VENV)/.stack requirements.txt requirements-train.txt
	@echo "==> [setup 2/2] $(VENV): the training stack, notebook and test tools (about 2.4 GB)"
	$(PY) -m pip install --progress-bar on -r requirements.txt
	touch $@

$(SAM_VENV)/.installed: requirements-deploy.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-deploy.txt
	touch $@

setup: $(VENV)/.installed $(SAM_VENV)/.installed browser ## create .venv (and .venv-sam) from the pinned requirements, and Chromium

test: setup $(VENV)/.bench-installed ## run the whole test suite (what CI runs)
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
sample-data: $(VENV)/.stack ## draw the seeded 6-class sample dataset into data/sample
	@echo "==> drawing the sample dataset into $(SAMPLE) (about 10 s)"
	$(PY) -m imgclf.pipeline.sample_data --out $(SAMPLE)

photo-data: $(VENV)/.installed ## crop the photos that ship with scikit-image/-learn, matplotlib into data/photos
	@echo "==> cropping 22 bundled photos into $(PHOTOS) (about 10 s)"
	$(PY) -m imgclf.pipeline.photo_data --out $(PHOTOS)

train: $(VENV)/.installed sample-data ## transfer learning or the CNN, chosen within 10 min, on the sample data -> runs/train
	$(PY) train.py --data $(SAMPLE) --out runs/train

convert: ## Keras -> TFLite behind the parity gate (QUANT=auto|float32|float16|dynamic|int8)
	$(PY) convert.py --model-dir runs/train --data $(SAMPLE) --quantization $(or $(QUANT),auto)

model: $(VENV)/.installed photo-data ## rebuild model/content/ by transfer learning on data/photos (default budget, seed 0)
	$(PY) train.py --data $(PHOTOS) --out runs/model --overwrite --val-by-source
	$(PY) convert.py --model-dir runs/model --data $(PHOTOS) --out model/content --name content

pretrained: $(VENV)/.installed ## rebuild model/imagenet/: pretrained EfficientNet-Lite0 through the gate
	$(PY) -m imgclf.pipeline.pretrained --out model/imagenet

notebook: $(VENV)/.installed ## execute notebook.ipynb on the sample data into runs/notebook.ipynb
	$(PY) scripts/run_notebook.py notebook.ipynb --out runs/notebook.ipynb

# ---- serving -----------------------------------------------------------------------------------
.PHONY: test-lambda-venv
test-lambda-venv: $(VENV)/.installed ## serving tests in a clean venv from requirements-lambda.txt alone
	$(PY) -m pytest tests/serving/test_lambda_venv.py

# ---- benchmarks (README "Benchmarks", docs/benchmarks.md) ---------------------------------------
.PHONY: bench bench-docs bench-retrain
BUDGET ?= full

# Benchmark-only engines (tf2onnx, onnx, onnxruntime): never in the serving set.
$(VENV)/.bench-installed: $(VENV)/.installed requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $@

bench: $(VENV)/.bench-installed ## every bundled model: handler vs Keras vs ONNX Runtime, batches, cold start, memory/cost curve (BUDGET=tiny)
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	test -d $(PHOTOS)/test || $(MAKE) photo-data
	$(PY) -m benchmarks --budget $(BUDGET) --out reports/bench

bench-docs: $(VENV)/.bench-installed ## the committed run: docs/benchmarks.{md,json,-memory.png}, then README's table
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	test -d $(PHOTOS)/test || $(MAKE) photo-data
	$(PY) -m benchmarks --budget full --out docs/benchmarks
	$(PY) -m benchmarks.report --readme --json docs/benchmarks.json

bench-retrain: $(VENV)/.installed ## a retraining job, trigger -> served, 1,000 cached + 50 new photos vs no cache (minutes) -> reports/bench-retrain/
	test -d $(PHOTOS)/train || $(MAKE) photo-data
	$(PY) -m benchmarks.retrain --out reports/bench-retrain

# ---- out-of-distribution scores (README "Serving API", docs/ood.md) ----------------------------
.PHONY: ood

ood: $(VENV)/.installed ## AUROC of each bundled model's OOD score: own test images vs far inputs -> docs/ood.{md,json}
	test -d $(SAMPLE)/seg_test || $(MAKE) sample-data
	test -d $(PHOTOS)/test || $(MAKE) photo-data
	$(PY) -m benchmarks.ood --out docs/ood

# ---- hostile input (README "Hostile input", docs/fuzz.md) --------------------------------------
.PHONY: fuzz
FUZZ_ARGS ?=

fuzz: $(VENV)/.installed ## hostile input through the handler (Pillow corpus in .cache/fuzz/) -> docs/fuzz.{md,json}
	$(PY) -m fuzz --out docs/fuzz $(FUZZ_ARGS)

# ---- web console (README "Web console") ---------------------------------------------------------
.PHONY: browser test-console
CHROMIUM ?= /usr/bin/chromium

# Playwright cannot download its own browser here: the tests drive Debian's Chromium. Installed
# once (as root, with apt); elsewhere skipped with a note, except under CI, where it must exist.
browser: ## Chromium for the console's browser tests (apt-get, as root; required when CI=true)
	@if [ -x "$(CHROMIUM)" ]; then \
		echo "==> browser: $(CHROMIUM) is there"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> browser: apt-get install chromium (about 300 MB)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	elif [ "$${CI:-}" = true ]; then \
		echo "error: CI runs the browser tests: install chromium (no root or no apt-get here)" >&2; \
		exit 1; \
	else \
		echo "==> browser: skipped (not root, or no apt-get): the browser tests will be skipped;" \
			"install Chromium yourself and set CHROMIUM=/path/to/chromium"; \
	fi

test-console: setup ## the web console in Chromium: every flow, the long retraining one included
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest tests/console

# ---- local stack and load testing (README "Local stack", "Load testing") -----------------------
.PHONY: run first-run load-test
PORT ?= 3000
S3_PORT ?= 4566
STATIC_PORT ?= 3001
WORKERS ?= 2
API_URL ?= http://127.0.0.1:$(PORT)
USERS ?= 10
SPAWN_RATE ?= 5
DURATION ?= 30s

run: $(VENV)/.stack ## the local stack: API on 127.0.0.1:3000 (PORT S3_PORT STATIC_PORT WORKERS); Ctrl-C stops it
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	$(PY) -m imgclf.local --port $(PORT) --s3-port $(S3_PORT) --static-port $(STATIC_PORT) \
		--workers $(WORKERS) --data-dir $(SAMPLE)

first-run: ## time a fresh clone's `make run` to the first answer (ports 3100/3101/3105) -> reports/first-run.log
	scripts/first_run.sh reports/first-run.log

load-test: $(VENV)/.installed ## Locust, headless, against API_URL (USERS, SPAWN_RATE, DURATION) -> reports/
	test -d $(SAMPLE)/seg_pred || $(MAKE) sample-data
	mkdir -p reports
	SAMPLE_DIR=$(SAMPLE) $(VENV)/bin/locust -f locustfile.py --headless --only-summary \
		--host $(API_URL) -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
		--csv reports/locust --html reports/locust.html

# ---- registry and retraining (README "Registry and retraining") --------------------------------
.PHONY: registry jobs retrain test-retrain
# The local stack's S3 endpoint (make run) with moto's dummy credentials; LOCAL_AWS= talks to AWS.
LOCAL_AWS ?= AWS_ENDPOINT_URL=http://127.0.0.1:$(S3_PORT) AWS_ACCESS_KEY_ID=testing \
	AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
REGISTRY_URI ?= s3://imgclf-models/models

registry: $(VENV)/.stack ## registry CLI (local stack): ARGS="list | show 2 | promote 2 | rollback"
	$(LOCAL_AWS) MODEL_REGISTRY_URI=$(REGISTRY_URI) $(PY) -m imgclf.registry $(or $(ARGS),list)

jobs: $(VENV)/.stack ## the training jobs of the local stack, their outcome, and the new images pending
	$(LOCAL_AWS) $(PY) -m imgclf.retrain list

retrain: $(VENV)/.stack ## ask the local stack to retrain a model now (MODEL=scene MODE=warm|full)
	$(LOCAL_AWS) $(PY) -m imgclf.retrain request --model $(or $(MODEL),scene) --mode $(or $(MODE),warm)

test-retrain: $(VENV)/.installed ## registry, ingestion and retraining tests (real training on tiny data)
	$(PY) -m pytest tests/core/test_registry.py tests/retrain tests/stack/test_retrain_e2e.py

# ---- captures, feedback and forgetting (README "Captures, feedback and forgetting") ------------
.PHONY: feedback forget bench-capture test-feedback

feedback: $(VENV)/.stack ## review feedback on the local stack: ARGS="list | approve ID | reject ID [--reason R]"
	$(LOCAL_AWS) $(PY) -m imgclf.feedback $(or $(ARGS),list)

forget: $(VENV)/.stack ## remove an image (SHA=<sha256>) everywhere in the local stack's data bucket; retrain its models
	$(LOCAL_AWS) $(PY) -m imgclf.registry forget $(SHA)

bench-capture: $(VENV)/.installed ## the handler's p50 with CAPTURE_FRACTION=0 beside =1, S3 = moto on loopback -> reports/bench-capture.json
	$(PY) -m benchmarks.capture

test-feedback: $(VENV)/.installed ## capture, feedback, forget and per-model metrics tests (the stack and browser ones too)
	$(PY) -m pytest tests/serving/test_capture.py tests/serving/test_feedback.py \
		tests/retrain/test_forget.py tests/stack/test_feedback_stack.py tests/console/test_feedback.py

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
