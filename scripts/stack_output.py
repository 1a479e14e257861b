"""Prints outputs of a deployed CloudFormation stack, one value per line, in the order asked.

Usage: python scripts/stack_output.py STACK KEY [KEY ...]
       (region and credentials as boto3 finds them, e.g. AWS_DEFAULT_REGION and AWS_PROFILE)

The deploy targets of the Makefile and scripts/publish_model.sh read the stack's buckets, registry
and functions with it (template.yaml's Outputs name them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from imgclf.cloudformation import StackNotReadable, stack_outputs  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the values; exits 1 when the stack lacks one of the keys."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", help="the stack's name")
    parser.add_argument("keys", nargs="+", help="output keys, e.g. ApiUrl DataBucketName")
    args = parser.parse_args(argv)
    try:
        outputs = stack_outputs(args.stack)
    except StackNotReadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    missing = [k for k in args.keys if k not in outputs]
    if missing:
        print(f"stack {args.stack} has no output {', '.join(missing)}", file=sys.stderr)
        return 1
    print("\n".join(outputs[k] for k in args.keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
