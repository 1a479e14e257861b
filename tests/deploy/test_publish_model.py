"""scripts/publish_model.sh against moto's CloudFormation and S3: the deploy step that makes the
bundled model the first live version of a stack's registry, once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid

import boto3
import pytest

from helpers import ROOT
from imgclf.registry import open_registry

# What the script reads of a stack: the outputs template.yaml declares.
STACK_TEMPLATE = {
    "Resources": {"ModelBucket": {"Type": "AWS::S3::Bucket"}},
    "Outputs": {
        "ModelRegistryUri": {"Value": {"Fn::Sub": "s3://${ModelBucket}/models"}},
        "ModelName": {"Value": "scene"},
    },
}


def publish(stack: str) -> subprocess.CompletedProcess[str]:
    command = [str(ROOT / "scripts" / "publish_model.sh"), stack, "us-east-1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow  # the registry loads and runs the model before it publishes: about 5 s
def test_the_bundled_model_becomes_the_first_live_version_once(aws_env: str) -> None:
    stack = f"imgclf-{uuid.uuid4().hex[:8]}"
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(StackName=stack, TemplateBody=json.dumps(STACK_TEMPLATE))
    outputs = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
    uri = next(o["OutputValue"] for o in outputs if o["OutputKey"] == "ModelRegistryUri")

    first = publish(stack)
    assert first.returncode == 0, first.stderr
    registry = open_registry(uri, "scene")
    assert registry.list_versions() == ["0001"]
    assert registry.read_live()[0]["version"] == "0001"
    stored = registry.read_version("0001")["model.tflite"]
    bundled = (ROOT / "model" / "scene" / "model.tflite").read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(bundled).digest()

    again = publish(stack)
    assert again.returncode == 0, again.stderr
    assert "live already" in again.stdout
    assert registry.list_versions() == ["0001"]


def test_a_stack_that_does_not_exist_fails_without_publishing(aws_env: str) -> None:
    result = publish(f"missing-{uuid.uuid4().hex[:8]}")
    assert result.returncode != 0
    assert "does not exist" in result.stderr
