"""The benchmark (``make bench``) still works: a tiny budget run writes every section with numbers.

These tests check that the figures are measured and that everything the report derives (ratios,
floors, costs, verdicts) is computed from them; they assert no performance figure.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import cost, footprint, probes, report
from benchmarks.inputs import INPUTS
from benchmarks.run import BUDGETS, QUANTIZATIONS
from imgclf.settings import PROJECT_ROOT


def _positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def bench(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny-budget run of ``python -m benchmarks`` on the small sample dataset."""
    out = tmp_path_factory.mktemp("bench") / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--budget", "tiny", "--out", str(out)]
        + ["--data", str(sample_data)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {
        "json": json.loads(out.with_suffix(".json").read_text()),
        "md": out.with_suffix(".md").read_text(),
    }


@pytest.mark.slow
def test_every_part_is_measured(bench: dict[str, Any]) -> None:
    results = bench["json"]["results"]
    tiny = BUDGETS["tiny"]
    # THEN each quantisation convert.py offers was served, on every input, with the floor beside it
    assert sorted(results["serving"]) == sorted(QUANTIZATIONS)
    for serving in results["serving"].values():
        assert sorted(serving["inputs"]) == sorted(item.name for item in INPUTS)
        for figures in serving["inputs"].values():
            for part in ("handler", "decode", "invoke"):
                assert figures[part]["n"] == tiny.iterations
                assert _positive(figures[part]["p50"]) and _positive(figures[part]["p99"])
        assert serving["macs"] > 0 and _positive(serving["peak_rss_mb"])
    # AND the usual Keras way, on the same inputs, three ways
    for figures in results["keras"]["inputs"].values():
        for way in ("tutorial", "predict", "call"):
            assert figures[way]["n"] == tiny.keras_iterations and _positive(figures[way]["p50"])
    assert _positive(results["peak"]["gflops"])
    for side in ("handler", "keras"):
        runs = results["cold"]["runs"][side]
        assert len(runs) == tiny.cold_runs
        assert all(_positive(run["to_first_answer_ms"]) for run in runs)
    for side in ("serving", "tensorflow"):
        assert _positive(results["footprint"][side]["installed_mb"])
    for q in QUANTIZATIONS:
        assert results["model"]["quantizations"][q]["bytes"] > 0
    assert results["cost"]["template_memory_mb"] >= 128
    # AND Locust ran once per worker count, with requests answered
    assert [run["workers"] for run in results["load"]] == list(tiny.workers)
    for run in results["load"]:
        assert run["total"]["requests"] > 0 and _positive(run["total"]["rps"])


@pytest.mark.slow
def test_derived_figures_come_from_the_measurements(bench: dict[str, Any]) -> None:
    results, derived = bench["json"]["results"], bench["json"]["derived"]
    assert len(derived["latency"]) == len(QUANTIZATIONS) * len(INPUTS)
    for row in derived["latency"]:
        measured = results["serving"][row["quantization"]]["inputs"][row["input"]]
        keras = results["keras"]["inputs"][row["input"]]
        handler = measured["handler"]["p50"]
        floor = measured["decode"]["p50"] + measured["invoke"]["p50"]
        assert row["handler_p50_ms"] == handler
        assert row["floor_p50_ms"] == pytest.approx(floor)
        assert row["handler_over_floor"] == pytest.approx(handler / floor)
        assert row["speedup_vs_keras_predict"] == pytest.approx(keras["predict"]["p50"] / handler)
        assert row["speedup_vs_keras_tutorial"] == pytest.approx(keras["tutorial"]["p50"] / handler)
    cold = {
        side: statistics.median(run["to_first_answer_ms"] for run in runs)
        for side, runs in results["cold"]["runs"].items()
    }
    assert derived["cold"]["speedup"] == pytest.approx(cold["keras"] / cold["handler"])
    for row in derived["invoke"]:
        seconds = row["invoke_p50_ms"] / 1000
        expected = 2 * row["macs"] / seconds / (results["peak"]["gflops"] * 1e9)
        assert row["fraction_of_fp32_peak"] == pytest.approx(expected)
    memory = results["cost"]["template_memory_mb"]
    for row in derived["cost"]:
        expected = cost.cost_per_million(row["handler"]["duration_ms"], memory)["total_usd"]
        assert row["handler"]["total_usd"] == pytest.approx(expected)
        assert row["ratio"] == pytest.approx(
            row["keras"]["total_usd"] / row["handler"]["total_usd"]
        )
    # AND each target's verdict agrees with its measured value
    for target in derived["targets"]:
        if ">=" in target["target"]:
            assert target["met"] == (target["value"] >= target["limit"])
        else:  # "<", "<=" and "== 0" (failures, never negative)
            assert target["met"] == (target["value"] <= target["limit"])


@pytest.mark.slow
def test_the_markdown_report_has_every_section_and_the_machine(bench: dict[str, Any]) -> None:
    md, meta = bench["md"], bench["json"]["meta"]
    for heading in ("## Targets", "## 1. ", "## 2. ", "## 3. ", "## 4. ", "## 5. ", "## 6. "):
        assert heading in md
    assert meta["machine"]["cpu_model"] in md and meta["command"] in md
    assert "python -m benchmarks --budget tiny" in meta["command"]
    first = bench["json"]["derived"]["latency"][0]
    assert (
        f"| {first['quantization']} | {first['input']} | {report._ms(first['handler_p50_ms'])} |"
        in md
    )


@pytest.mark.slow
def test_readme_section_is_copied_from_the_json(bench: dict[str, Any], tmp_path: Path) -> None:
    # GIVEN a README with the bench markers and text around them
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\n## Benchmarks\n\n{report.START}\nstale figures\n{report.END}\n\nafter\n"
    )
    # WHEN the section is rewritten from the JSON
    report.update_readme(readme, bench["json"])
    # THEN the headline table replaced the old text and nothing else changed
    text = readme.read_text()
    assert (
        "stale figures" not in text and text.startswith("# Title\n") and text.endswith("\nafter\n")
    )
    assert report.headline(bench["json"]) in text
    cold = bench["json"]["derived"]["cold"]["handler"]["to_first_answer_ms"]
    assert f"{cold:.0f} ms" in text
    # AND rewriting again is stable
    report.update_readme(readme, bench["json"])
    assert readme.read_text() == text


@pytest.mark.slow
def test_macs_are_counted_from_the_tflite_ops() -> None:
    import keras

    from imgclf.pipeline.conversion import to_tflite

    # GIVEN a model whose multiply-accumulates are known: 16x16 outputs of a 3x3 convolution
    # (3 -> 4 channels), of a 3x3 depthwise convolution (4 channels), and a 4 -> 5 dense layer
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )
    content = to_tflite(model, "float32", np.zeros((1, 16, 16, 3), dtype=np.uint8))
    # THEN the count read from the TFLite ops is exactly theirs
    assert probes.count_macs(content) == 16 * 16 * 4 * 27 + 16 * 16 * 4 * 9 + 4 * 5


def test_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(ValueError, match="bench:start"):
        report.update_readme(readme, {})


def test_lambda_bills_whole_milliseconds_at_the_published_price() -> None:
    # 1 ms at 1024 MB is one million milliseconds at 1 GB: 1000 GB-s, plus the request fee.
    assert cost.cost_per_million(1.0, 1024)["total_usd"] == pytest.approx(
        0.20 + 1000 * 0.0000166667
    )
    assert cost.cost_per_million(1.01, 1024)["billed_ms"] == 2
    assert cost.memory_for(peak_rss_mb=700, floor_mb=1769) == 1769
    assert cost.memory_for(peak_rss_mb=1800, floor_mb=1769) == 1856


def test_the_template_memory_size_is_read_through_cloudformation_tags(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        "Parameters:\n  PredictMemorySize:\n    Type: Number\n    Default: 2048\n"
        "Resources:\n  F:\n    Properties:\n      MemorySize: !Ref PredictMemorySize\n"
        "      Name: !Sub '${AWS::StackName}-f'\n      List: !GetAtt [A, Arn]\n"
    )
    assert cost.template_memory_mb(template) == 2048


def test_the_serving_footprint_is_the_closure_of_requirements_lambda() -> None:
    serving = footprint.closure(
        footprint.read_requirements(PROJECT_ROOT / "requirements-lambda.txt")
    )
    # THEN the transitive dependencies are in, and nothing of TensorFlow
    assert {"ai-edge-litert", "pillow", "numpy", "botocore", "s3transfer"} <= set(serving)
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(serving)
    tensorflow = footprint.closure(footprint.TENSORFLOW_STACK)
    assert {"tensorflow-cpu", "keras", "h5py", "pillow", "numpy"} <= set(tensorflow)
