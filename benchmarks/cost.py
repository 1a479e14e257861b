"""What one million predictions cost on AWS Lambda, from a measured duration and a memory size."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

# AWS Lambda, x86, us-east-1, first pricing tier (on-demand, no free tier).
PRICE_TABLE = {
    "gb_second_usd": 0.0000166667,
    "per_million_requests_usd": 0.20,
    "region": "us-east-1",
    "architecture": "x86_64",
    "source": "price table as published by AWS, read 2026-11; "
    "check https://aws.amazon.com/lambda/pricing/",
    "billing": "duration rounded up to 1 ms; memory in MB / 1024 = GB",
}
# Lambda gives a function one full vCPU at this memory size (CPU share is proportional to memory):
# a duration measured on one core holds at this size or above, not below it.
ONE_VCPU_MB = 1769
MEMORY_STEP_MB = 64
# The memory sizes the cost curve measures (what AWS Lambda Power Tuning would try), in MB.
CURVE_SIZES_MB = (128, 256, 384, 512, 768, 1024, 1280, 1536, 1769, 2048, 3008)
# The choice from the curve: the fastest size whose price is within this of the cheapest one.
PRICE_TOLERANCE = 0.05


class _CloudFormationLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation short tags (``!Ref``, ``!Sub``) as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)


_CloudFormationLoader.add_multi_constructor("!", _any_tag)


def template_memory_mb(template: Path, parameter: str = "PredictMemorySize") -> int:
    """The default memory size of the predict function in a SAM template.

    Args:
        template: the ``template.yaml``.
        parameter: the parameter PredictFunction's ``MemorySize`` refers to.

    Returns:
        The parameter's default, in MB.
    """
    doc = yaml.load(template.read_text(), Loader=_CloudFormationLoader)  # noqa: S506 - safe loader
    return int(doc["Parameters"][parameter]["Default"])


def template_min_memory_mb(template: Path, parameter: str = "PredictMemorySize") -> int:
    """The smallest memory size the template allows the predict function (``MinValue``).

    The template derives it from the peak RSS of the worst admitted input, so no choice made from
    latency or price may go under it.
    """
    doc = yaml.load(template.read_text(), Loader=_CloudFormationLoader)  # noqa: S506 - safe loader
    return int(doc["Parameters"][parameter].get("MinValue", 128))


def price_per_million(billed_ms: float, memory_mb: int) -> float:
    """The Lambda bill in USD for a million requests billed ``billed_ms`` (rounded up) each."""
    compute = 1e6 * billed_ms / 1000 * memory_mb / 1024 * PRICE_TABLE["gb_second_usd"]
    return compute + PRICE_TABLE["per_million_requests_usd"]


def choose_memory(rows: list[dict[str, Any]], floor_mb: int) -> dict[str, Any]:
    """The memory size to deploy from a measured curve.

    Among the sizes at or above ``floor_mb``: the cheapest price, then the fastest (lowest p50)
    size whose price is within ``PRICE_TOLERANCE`` of it (ties: the smaller size).

    Args:
        rows: ``{"memory_mb", "p50_ms", "usd_per_million"}`` per size.
        floor_mb: the smallest size allowed (peak RSS).

    Returns:
        ``{"memory_mb", "p50_ms", "usd_per_million", "cheapest_mb", "cheapest_usd"}``.

    Raises:
        ValueError: no size is at or above the floor.
    """
    allowed = [r for r in rows if r["memory_mb"] >= floor_mb]
    if not allowed:
        raise ValueError(f"no measured size is at or above {floor_mb} MB")
    cheapest = min(allowed, key=lambda r: (r["usd_per_million"], r["memory_mb"]))
    near = [
        r
        for r in allowed
        if r["usd_per_million"] <= cheapest["usd_per_million"] * (1 + PRICE_TOLERANCE)
    ]
    best = min(near, key=lambda r: (r["p50_ms"], r["memory_mb"]))
    return {
        "memory_mb": best["memory_mb"],
        "p50_ms": best["p50_ms"],
        "usd_per_million": best["usd_per_million"],
        "cheapest_mb": cheapest["memory_mb"],
        "cheapest_usd": cheapest["usd_per_million"],
    }


def memory_for(peak_rss_mb: float, floor_mb: int) -> int:
    """A Lambda memory size for a process: ``floor_mb``, or more if its peak RSS needs it.

    Args:
        peak_rss_mb: the process's measured peak resident set size.
        floor_mb: the smallest size to use (one vCPU, the CPU the duration was measured on).

    Returns:
        The memory size in MB (rounded up to a multiple of 64 MB when above ``floor_mb``).
    """
    if peak_rss_mb <= floor_mb:
        return floor_mb
    return int(math.ceil(peak_rss_mb / MEMORY_STEP_MB) * MEMORY_STEP_MB)


def cost_per_million(duration_ms: float, memory_mb: int) -> dict[str, float]:
    """The Lambda bill for one million invocations of a given duration and memory.

    Args:
        duration_ms: one invocation's duration.
        memory_mb: the function's memory size.

    Returns:
        ``{"billed_ms", "compute_usd", "requests_usd", "total_usd"}``.
    """
    billed_ms = math.ceil(duration_ms)
    compute = 1e6 * billed_ms / 1000 * memory_mb / 1024 * PRICE_TABLE["gb_second_usd"]
    requests = PRICE_TABLE["per_million_requests_usd"]
    return {
        "billed_ms": billed_ms,
        "compute_usd": compute,
        "requests_usd": requests,
        "total_usd": compute + requests,
    }
