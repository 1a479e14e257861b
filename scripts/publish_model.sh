#!/usr/bin/env bash
# Publishes each bundled model (model/<name>/) into a deployed stack's model registry as its first
# version and makes it live: until a version is live, that model answers 503. Leaves a model that
# has a live version alone (retraining publishes the next ones; `python -m imgclf.registry`
# publishes, promotes or rolls back by hand).
#
# Usage: scripts/publish_model.sh [STACK [REGION]]
#   default: stack_name and region from samconfig.toml, as `sam deploy --guided` saved them.
# Needs AWS credentials allowed to read the stack and write the model bucket.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

deploy_setting() {
    "$PY" -c 'import sys, tomllib
print(tomllib.load(open("samconfig.toml", "rb"))["default"]["deploy"]["parameters"][sys.argv[1]])' "$1"
}
stack=${1:-$(deploy_setting stack_name)}
export AWS_DEFAULT_REGION=${2:-$(deploy_setting region)}

# The registry's location, from the stack's outputs.
uri=$("$PY" scripts/stack_output.py "$stack" ModelRegistryUri)
"$PY" -m imgclf.registry --uri "$uri" publish-bundled model/
