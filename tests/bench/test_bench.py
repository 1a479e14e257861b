"""The benchmark (``make bench``) still works: a tiny budget run writes every section with numbers.

These tests check that the figures are measured and that everything the report derives (ratios,
floors, engines, batches, costs, the memory choice, verdicts) is computed from them; they assert no
performance figure. The tiny run measures ``imagenet`` and ``scene`` only (``--models``), for the
suite's time; ``make bench`` measures every bundled model, each on its own dataset.
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

from benchmarks import cost, footprint, ood, probes, report
from benchmarks.datasets import DatasetMissing, model_dataset
from benchmarks.engines import ONNX_VARIANTS
from benchmarks.inputs import INPUTS
from benchmarks.run import BATCH_SIZES, BUDGETS, QUANTIZATIONS, bundled_models
from benchmarks.run import main as run_bench
from imgclf.settings import PROJECT_ROOT

# The models the tiny run measures: the pretrained one and one with a Keras source and a dataset.
# `make bench` measures every bundled model; content (EfficientNet-Lite0 on data/photos) would
# double the run's minutes for no path these two do not already take.
BENCH_MODELS = ("imagenet", "scene")


def _positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def bench(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny-budget run of ``python -m benchmarks`` of ``BENCH_MODELS`` on the small sample data.

    Only imagenet and scene, to keep the suite's time: ``make bench`` measures every bundled model.
    scene's own dataset (``config.data``: ``data/sample``) is the small sample data here too, read
    under a ``--data-root`` that holds it as ``data/sample``.
    """
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench"
    (tmp / "data").mkdir()
    (tmp / "data" / "sample").symlink_to(sample_data, target_is_directory=True)
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--budget", "tiny", "--out", str(out)]
        + ["--models", *BENCH_MODELS, "--data", str(sample_data), "--data-root", str(tmp)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {
        "json": json.loads(out.with_suffix(".json").read_text()),
        "md": out.with_suffix(".md").read_text(),
        "chart": out.with_name(out.name + report.CHART_SUFFIX),
    }


def _models(bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: measured
        for name, measured in bench["json"]["results"]["models"].items()
        if "skipped" not in measured
    }


@pytest.mark.slow
def test_the_models_asked_for_are_measured(bench: dict[str, Any]) -> None:
    """Every model the run asked for (``make bench``: every bundled model) is measured."""
    results = bench["json"]["results"]
    tiny = BUDGETS["tiny"]
    # THEN each model asked for was measured, none skipped, the default one first
    asked = bundled_models(PROJECT_ROOT / "model", list(BENCH_MODELS))
    assert list(results["models"]) == [p.name for p in asked]
    assert list(_models(bench)) == list(results["models"])
    assert results["default_model"] == next(iter(results["models"]))
    for measured in _models(bench).values():
        bundled = measured["model"]["bundled_quantization"]
        expected = sorted({*tiny.quantizations, bundled} & set(QUANTIZATIONS))
        # each quantisation asked for was served, on every input, with the floor beside it
        assert sorted(measured["serving"]) == expected
        for serving in measured["serving"].values():
            assert sorted(serving["inputs"]) == sorted(item.name for item in INPUTS)
            for figures in serving["inputs"].values():
                for part in ("handler", "decode", "invoke"):
                    assert figures[part]["n"] == tiny.iterations
                    assert _positive(figures[part]["p50"]) and _positive(figures[part]["p99"])
            assert serving["macs"] > 0 and _positive(serving["peak_rss_mb"])
        # AND the usual Keras way, on the same inputs, three ways
        for figures in measured["keras"]["inputs"].values():
            for way in ("tutorial", "predict", "call"):
                assert figures[way]["n"] == tiny.keras_iterations and _positive(figures[way]["p50"])
        # AND LiteRT beside ONNX Runtime in one process, and the whole request each way
        engines = measured["engines"]
        samples = tiny.engine_rounds * (tiny.engine_block - 1)
        assert sorted(engines["litert"]) == expected
        assert sorted(engines["onnx"]) == sorted(ONNX_VARIANTS)
        for figures in engines["litert"].values():
            assert figures["predict"]["n"] == samples and _positive(figures["invoke"]["p50"])
        for figures in engines["onnx"].values():
            assert figures["run"]["n"] == samples and _positive(figures["run"]["p50"])
        ways = {"handler", "decode", "litert"} | {f"onnx-{v}" for v in ONNX_VARIANTS}
        assert set(engines["e2e"]) == ways
        # AND uint8 pixels go into the int8 model unchanged, and into no float model
        assert engines["litert"]["int8"]["uint8_pixels_unchanged"] is True
        assert engines["litert"]["int8"]["input"]["dtype"] == "uint8"
        for quantization in set(expected) - {"int8"}:
            assert engines["litert"][quantization]["uint8_pixels_unchanged"] is False
        for variant in ONNX_VARIANTS:
            onnx = measured["model"]["onnx"][variant]
            assert onnx["bytes"] > 0 and 0 <= onnx["agreement"] <= 1 and onnx["images"] > 0
        # AND batches of 1, 4 and 8 both ways, with the same answers
        batch = measured["batch"]["sizes"]
        assert sorted(int(n) for n in batch) == sorted(BATCH_SIZES)
        for figures in batch.values():
            assert figures["same_as_loop"] is True
            assert _positive(figures["loop"]["p50"]) and _positive(figures["batch"]["p50"])
        # AND the memory curve at each size of the budget, and the cold starts
        curve = measured["curve"]["rows"]
        assert [row["memory_mb"] for row in curve] == list(tiny.curve_sizes)
        assert all(_positive(row["p50"]) and row["billed_ms_mean"] >= 1 for row in curve)
        # the CPU time each request used, and that time over the share (a quiet core)
        for row in curve:
            assert _positive(row["cpu"]["p50"])
            assert row["quiet"]["p50"] == pytest.approx(row["cpu"]["p50"] / row["share"])
        for side in ("handler", "keras"):
            runs = measured["cold"]["runs"][side]
            assert len(runs) == tiny.cold_runs
            assert all(_positive(run["to_first_answer_ms"]) for run in runs)
    assert _positive(results["peak"]["gflops"])
    assert len(results["retrain_cold"]["runs"]) == tiny.cold_runs
    for side in ("serving", "tensorflow"):
        assert _positive(results["footprint"][side]["installed_mb"])
    assert results["cost"]["template_memory_mb"] >= results["cost"]["template_min_memory_mb"]
    # AND Locust ran once per worker count, with requests answered
    assert [run["workers"] for run in results["load"]] == list(tiny.workers)
    for run in results["load"]:
        assert run["total"]["requests"] > 0 and _positive(run["total"]["rps"])


@pytest.mark.slow
def test_derived_figures_come_from_the_measurements(bench: dict[str, Any]) -> None:
    results, derived = bench["json"]["results"], bench["json"]["derived"]
    assert sorted(derived["models"]) == sorted(_models(bench))
    for name, d in derived["models"].items():
        measured = results["models"][name]
        assert len(d["latency"]) == len(measured["serving"]) * len(INPUTS)
        for row in d["latency"]:
            figures = measured["serving"][row["quantization"]]["inputs"][row["input"]]
            keras = measured["keras"]["inputs"][row["input"]]
            handler = figures["handler"]["p50"]
            floor = figures["decode"]["p50"] + figures["invoke"]["p50"]
            assert row["handler_p50_ms"] == handler
            assert row["floor_p50_ms"] == pytest.approx(floor)
            assert row["handler_over_floor"] == pytest.approx(handler / floor)
            assert row["speedup_vs_keras_predict"] == pytest.approx(
                keras["predict"]["p50"] / handler
            )
        cold = {
            side: statistics.median(run["to_first_answer_ms"] for run in runs)
            for side, runs in measured["cold"]["runs"].items()
        }
        assert d["cold"]["speedup"] == pytest.approx(cold["keras"] / cold["handler"])
        for row in d["invoke"]:
            seconds = row["invoke_p50_ms"] / 1000
            expected = 2 * row["macs"] / seconds / (results["peak"]["gflops"] * 1e9)
            assert row["fraction_of_fp32_peak"] == pytest.approx(expected)
        # AND every engine is compared with the served model's predict, measured in one process
        bundled = measured["model"]["bundled_quantization"]
        served = measured["engines"]["litert"][bundled]["predict"]["p50"]
        assert [r["variant"] for r in d["engines"] if r["served"]] == [bundled]
        for row in d["engines"]:
            assert row["vs_served"] == pytest.approx(row["p50_ms"] / served)
        best = min(measured["engines"]["onnx"].values(), key=lambda f: f["run"]["p50"])
        assert d["e2e"]["served_over_best_onnx"] == pytest.approx(served / best["run"]["p50"])
        e2e = measured["engines"]["e2e"]
        assert d["e2e"]["handler_over_decode_invoke"] == pytest.approx(
            e2e["handler"]["p50"] / (e2e["decode"]["p50"] + served)
        )
        # AND each batch size's verdict follows from its two timings and the rule's margin
        rule = d["batch"]["rule"]
        for row in d["batch"]["rows"]:
            assert row["speedup"] == pytest.approx(row["loop_p50_ms"] / row["batch_p50_ms"])
            assert row["faster"] == (row["size"] > 1 and row["speedup"] >= rule["min_speedup"])
            assert row["serving_batches"] == (row["size"] in rule["batch_invoke_sizes"])
        # AND the curve's prices, and a choice from the quiet-core figures above the floor
        for row in d["curve"]:
            assert row["usd_per_million"] == pytest.approx(
                cost.price_per_million(row["billed_ms_mean"], row["memory_mb"])
            )
            assert row["quiet_usd_per_million"] == pytest.approx(
                cost.price_per_million(row["quiet_billed_ms_mean"], row["memory_mb"])
            )
        basis = [
            {
                "memory_mb": r["memory_mb"],
                "p50_ms": r["quiet_p50_ms"],
                "usd_per_million": r["quiet_usd_per_million"],
            }
            for r in d["curve"]
        ]
        floor_mb = results["cost"]["template_min_memory_mb"]
        assert d["memory"] == cost.choose_memory(basis, floor_mb)
        assert d["memory"]["memory_mb"] >= results["cost"]["template_min_memory_mb"]
        memory = results["cost"]["template_memory_mb"]
        for row in d["cost"]:
            expected = cost.cost_per_million(row["handler"]["duration_ms"], memory)["total_usd"]
            assert row["handler"]["total_usd"] == pytest.approx(expected)
    chosen = [d["memory"]["memory_mb"] for d in derived["models"].values()]
    assert derived["memory"]["chosen_mb"] == max(chosen)
    # AND each target's verdict agrees with its measured value
    for target in derived["targets"]:
        if ">=" in target["target"] and "==" not in target["target"]:
            assert target["met"] == (target["value"] >= target["limit"])
        elif "PredictMemorySize" in target["target"]:
            assert target["met"] == (target["value"] == target["limit"])
        else:  # "<", "<=" and "== 0" (counts, never negative)
            assert target["met"] == (target["value"] <= target["limit"])


@pytest.mark.slow
def test_the_markdown_report_has_every_section_the_machine_and_the_chart(
    bench: dict[str, Any],
) -> None:
    md, meta = bench["md"], bench["json"]["meta"]
    for heading in ("## Targets", *(f"## {n}. " for n in range(1, 10))):
        assert heading in md
    assert meta["machine"]["cpu_model"] in md and meta["command"] in md
    assert "python -m benchmarks --budget tiny" in meta["command"]
    # THEN the instruction sets that decide int8's speed are named, present and absent
    assert set(meta["machine"]["simd"]) | set(meta["machine"]["simd_absent"]) >= {
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_int8",
    }
    for flag in meta["machine"]["simd_absent"]:
        assert flag in md
    name, d = next(iter(bench["json"]["derived"]["models"].items()))
    first = d["latency"][0]
    assert (
        f"| {name} | {first['quantization']} | {first['input']} | "
        f"{report._ms(first['handler_p50_ms'])} |" in md
    )
    # AND the memory chart is a PNG the report links
    assert bench["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({bench['chart'].name})" in md


@pytest.mark.slow
def test_readme_section_is_copied_from_the_json(bench: dict[str, Any], tmp_path: Path) -> None:
    # GIVEN a README with the bench markers and text around them
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\n## Benchmarks\n\n{report.START}\nstale figures\n{report.END}\n\nafter\n"
    )
    # WHEN the section is rewritten from the JSON
    report.update_readme(readme, bench["json"])
    # THEN the headline tables replaced the old text and nothing else changed
    text = readme.read_text()
    assert (
        "stale figures" not in text and text.startswith("# Title\n") and text.endswith("\nafter\n")
    )
    assert report.headline(bench["json"]) in text
    default = bench["json"]["results"]["default_model"]
    cold = bench["json"]["derived"]["models"][default]["cold"]["handler"]["to_first_answer_ms"]
    assert f"{cold:.0f} ms" in text and "ONNX Runtime int8" in text
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


def _model_folder(root: Path, name: str, data: str | None) -> Path:
    """A bundled-model folder under ``root/model`` whose metrics.json records ``data``."""
    folder = root / "model" / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    metrics = {"config": {"data": data}} if data else {"name": name}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_each_model_uses_the_dataset_its_metrics_record(tmp_path: Path) -> None:
    # GIVEN models trained on data/photos and data/sample, and a pretrained one (no config.data)
    content = _model_folder(tmp_path, "content", "data/photos")
    scene = _model_folder(tmp_path, "scene", "data/sample")
    imagenet = _model_folder(tmp_path, "imagenet", None)
    # WHEN data/photos is missing, or has no splits, THEN the error names what builds it
    with pytest.raises(DatasetMissing, match=r"data/photos .*model/content.*make photo-data"):
        model_dataset(content, tmp_path)
    (tmp_path / "data" / "photos").mkdir(parents=True)
    with pytest.raises(DatasetMissing, match="make photo-data"):
        model_dataset(content, tmp_path)
    with pytest.raises(DatasetMissing, match="make sample-data"):
        model_dataset(scene, tmp_path)
    # WHEN it holds its train and test splits, THEN it is that model's dataset
    for split in ("train", "test"):
        (tmp_path / "data" / "photos" / split / "object").mkdir(parents=True)
    assert model_dataset(content, tmp_path) == tmp_path / "data" / "photos"
    # AND the pretrained model has none
    assert model_dataset(imagenet, tmp_path) is None
    # AND the OOD benchmark's far inputs follow what each model was trained on
    assert ood.trained_on(content, tmp_path) == (ood.PHOTOS, tmp_path / "data" / "photos")
    assert ood.trained_on(imagenet, tmp_path) == (ood.PHOTOS, None)
    for split in ("seg_train", "seg_test"):
        (tmp_path / "data" / "sample" / split / "forest").mkdir(parents=True)
    assert ood.trained_on(scene, tmp_path)[0] == ood.SYNTHETIC


def test_the_benchmark_refuses_a_model_whose_dataset_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a bundled model trained on data/photos, which is not there, and the shared sample data
    _model_folder(tmp_path, "content", "data/photos")
    (tmp_path / "sample" / "seg_pred").mkdir(parents=True)
    args = ["--model-root", str(tmp_path / "model"), "--data", str(tmp_path / "sample")]
    # WHEN the benchmark starts, THEN it stops before measuring, saying how to build the data
    with pytest.raises(SystemExit) as stopped:
        run_bench([*args, "--data-root", str(tmp_path), "--out", str(tmp_path / "bench")])
    assert stopped.value.code == 2
    assert "make photo-data" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


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
    assert cost.price_per_million(1.0, 1024) == pytest.approx(0.20 + 1000 * 0.0000166667)
    assert cost.memory_for(peak_rss_mb=700, floor_mb=1769) == 1769
    assert cost.memory_for(peak_rss_mb=1800, floor_mb=1769) == 1856


def test_the_memory_choice_is_the_fastest_size_near_the_cheapest_above_the_floor() -> None:
    def row(memory_mb: int, p50_ms: float, usd: float) -> dict[str, Any]:
        return {"memory_mb": memory_mb, "p50_ms": p50_ms, "usd_per_million": usd}

    # GIVEN a CPU-bound curve: the price about flat up to one vCPU, then rising with memory
    rows = [
        row(256, 70.0, 0.41),
        row(512, 35.0, 0.40),
        row(1024, 17.5, 0.41),
        row(1769, 10.0, 0.415),
        row(3008, 10.0, 0.70),
    ]
    # THEN the fastest size within 5% of the cheapest price is chosen
    assert cost.choose_memory(rows, floor_mb=128)["memory_mb"] == 1769
    assert cost.choose_memory(rows, floor_mb=128)["cheapest_mb"] == 512
    # AND a size below the floor is never chosen, even the cheapest
    cheap_below = [row(256, 70.0, 0.10), row(512, 35.0, 0.40), row(1769, 10.0, 0.60)]
    assert cost.choose_memory(cheap_below, floor_mb=512)["memory_mb"] == 512
    with pytest.raises(ValueError, match="at or above"):
        cost.choose_memory(rows, floor_mb=4096)


def test_the_template_memory_size_is_read_through_cloudformation_tags(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        "Parameters:\n  PredictMemorySize:\n    Type: Number\n    Default: 2048\n"
        "    MinValue: 512\n"
        "Resources:\n  F:\n    Properties:\n      MemorySize: !Ref PredictMemorySize\n"
        "      Name: !Sub '${AWS::StackName}-f'\n      List: !GetAtt [A, Arn]\n"
    )
    assert cost.template_memory_mb(template) == 2048
    assert cost.template_min_memory_mb(template) == 512


def test_the_serving_footprint_is_the_closure_of_requirements_lambda() -> None:
    serving = footprint.closure(
        footprint.read_requirements(PROJECT_ROOT / "requirements-lambda.txt")
    )
    # THEN the transitive dependencies are in, and nothing of TensorFlow or ONNX
    assert {"ai-edge-litert", "pillow", "numpy", "botocore", "s3transfer"} <= set(serving)
    assert not {"tensorflow", "tensorflow-cpu", "keras", "onnxruntime", "onnx"} & set(serving)
    tensorflow = footprint.closure(footprint.TENSORFLOW_STACK)
    assert {"tensorflow-cpu", "keras", "h5py", "pillow", "numpy"} <= set(tensorflow)
