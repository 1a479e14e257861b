"""Reads a deployed stack's outputs (template.yaml's Outputs: the API URL, buckets, functions)."""

from __future__ import annotations

import boto3
from botocore.exceptions import BotoCoreError, ClientError


class StackNotReadable(Exception):
    """The stack's outputs cannot be read; the message says why and what to set."""


def stack_outputs(stack_name: str) -> dict[str, str]:
    """Returns a stack's outputs by key (region and credentials as boto3 finds them).

    Args:
        stack_name: the deployed stack's name.

    Returns:
        ``{OutputKey: OutputValue}``.

    Raises:
        StackNotReadable: no region or credentials are configured, the stack does not exist, or
            AWS refused the call; the message is one line a person can act on.
    """
    try:
        client = boto3.client("cloudformation")
        stack = client.describe_stacks(StackName=stack_name)["Stacks"][0]
    except BotoCoreError as exc:
        # NoRegionError, NoCredentialsError, EndpointConnectionError, ...
        raise StackNotReadable(
            f"cannot read stack {stack_name!r}: {exc} (set AWS_DEFAULT_REGION and AWS "
            "credentials, e.g. AWS_PROFILE, or pass --url)"
        ) from exc
    except ClientError as exc:
        raise StackNotReadable(f"cannot read stack {stack_name!r}: {exc}") from exc
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
