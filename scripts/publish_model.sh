#!/usr/bin/env bash
# Publishes the bundled model/ into a deployed stack's model registry as its first version and
# makes it live: until a version is live, PredictFunction answers 503. Does nothing when a version
# is live already (retraining publishes the next ones; `python -m imgclf.registry` publishes,
# promotes or rolls back by hand).
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

# The registry's location and the model's name, from the stack's outputs.
outputs=$("$PY" scripts/stack_output.py "$stack" ModelRegistryUri ModelName)
{ read -r uri; read -r name; } <<<"$outputs"

# Exit code 3: nothing is live yet. Any other failure stops the script.
status=0
"$PY" - "$uri" "$name" <<'PYTHON' || status=$?
import sys
from imgclf.registry import AliasNotFound, open_registry
try:
    live = open_registry(sys.argv[1], sys.argv[2]).read_live()[0]
except AliasNotFound:
    sys.exit(3)
print(f"{sys.argv[1]}/{sys.argv[2]}: version {live['version']} is live already; nothing published")
PYTHON
case $status in
    0) ;;
    3) "$PY" -m imgclf.registry --uri "$uri" --name "$name" publish model/ --promote ;;
    *) exit "$status" ;;
esac
