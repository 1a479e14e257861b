"""Reads a deployed stack's outputs (template.yaml's Outputs: the API URL, buckets, functions)."""

from __future__ import annotations

import boto3


def stack_outputs(stack_name: str) -> dict[str, str]:
    """Returns a stack's outputs by key (region and credentials as boto3 finds them).

    Args:
        stack_name: the deployed stack's name.

    Returns:
        ``{OutputKey: OutputValue}``.
    """
    stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
