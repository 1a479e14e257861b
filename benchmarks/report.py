"""The benchmark report: Markdown and a chart from the JSON, and README.md's headline table.

    python -m benchmarks.report --readme [--json docs/benchmarks.json]

rewrites the part of README.md between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` from the
JSON, so the README's figures are copied from a benchmark run, never typed. ``write_report`` writes
``OUT.json``, ``OUT.md`` and the memory / price chart ``OUT-memory.png`` (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from imgclf.settings import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS_JSON = PROJECT_ROOT / "docs" / "benchmarks.json"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
HEADLINE_INPUT = "jpeg-640x480"
CHART_SUFFIX = "-memory.png"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _x(value: float) -> str:
    return f"{value:.1f}x"


def _x2(value: float) -> str:
    return f"{value:.2f}x"


def _usd(value: float) -> str:
    return f"${value:.2f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _models(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The measured models' derived figures, the default model first."""
    return report["derived"]["models"]


def _measured(report: dict[str, Any], name: str) -> dict[str, Any]:
    return report["results"]["models"][name]


def _header(report: dict[str, Any]) -> str:
    meta = report["meta"]
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    load_start = ", ".join(f"{x:.2f}" for x in m["load_average_start"])
    load_end = ", ".join(f"{x:.2f}" for x in m["load_average_end"])
    inputs = ", ".join(
        f"{k} ({v['bytes'] / 1000:.0f} kB)" for k, v in report["results"]["inputs"].items()
    )
    simd = ", ".join(m["simd"]) or "no AVX"
    absent = ", ".join(m.get("simd_absent", [])) or "none"
    models = []
    for name, measured in report["results"]["models"].items():
        if "skipped" in measured:
            models.append(f"`{name}` (skipped: {measured['skipped']})")
            continue
        model = measured["model"]
        keras_path = Path(model["keras_path"])
        if keras_path.is_relative_to(PROJECT_ROOT):
            keras_path = keras_path.relative_to(PROJECT_ROOT)
        models.append(
            f"`{name}` ({model['input_side']}x{model['input_side']}, served `"
            f"{model['bundled_quantization']}`, sha256 `{model['sha256'][:12]}`; Keras source "
            f"`{keras_path}`)"
        )
    default = report["results"]["default_model"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{meta['command']}` on {meta['date']} (commit {meta['commit']}, budget "
        f"`{meta['budget']['name']}`, {meta['seconds']:.0f} s). Every figure below comes from "
        "`benchmarks.json`, written by the same run.",
        "",
        f"- **Machine:** {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gb']} GB, Linux "
        f"{m['kernel']}, Python {m['python']}. Timed processes are pinned to CPU "
        f"{m['pinned_cpu']}, with one interpreter / BLAS / TensorFlow / ONNX Runtime thread.",
        f"- **Instruction sets** (`/proc/cpuinfo`): has {simd}; lacks {absent}. int8 kernels "
        "depend on them: VNNI (avx512_vnni / avx_vnni) and AMX do int8 dot products in one "
        "instruction; with AVX2 alone int8 is multiply-add pairs into 16 bits, little faster "
        "than float32.",
        f"- **Load average** (1, 5, 15 min) at start: {load_start}; at end: {load_end}. This "
        "machine is shared: absolute times rise with the load; the calls compared within a "
        "process are timed in turn (one of each per round, or in blocks per round) so they share "
        "the noise, and ratios hold better than times.",
        f"- **Versions:** {versions}.",
        f"- **Models** (`model/<name>/`, default `{default}` first): " + "; ".join(models) + ". "
        "Each model's Keras source is converted to each quantisation by "
        "`imgclf.pipeline.conversion` (the gate's figures below) and to ONNX by tf2onnx.",
        "- **Inputs:** photo-like synthetic images (gradients plus blurred noise), JPEG quality "
        f"90: {inputs}.",
    ]
    return "\n".join(lines)


def _targets(report: dict[str, Any]) -> str:
    rows = [
        [
            t["model"],
            t["target"],
            f"{t['value']:.2f}",
            "met" if t["met"] else "**missed**",
            t["detail"],
        ]
        for t in report["derived"]["targets"]
    ]
    return "## Targets (one core)\n\n" + _table(["model", "target", "measured", "", "detail"], rows)


def _latency(report: dict[str, Any]) -> str:
    header = [
        "model",
        "quantisation",
        "input",
        "handler p50",
        "handler p99",
        "Keras predict p50",
        "handler faster",
        "Keras tutorial p50",
        "handler faster",
        "Keras model(x) p50",
    ]
    rows = [
        [
            name,
            r["quantization"],
            r["input"],
            _ms(r["handler_p50_ms"]),
            _ms(r["handler_p99_ms"]),
            _ms(r["keras_predict_p50_ms"]),
            _x(r["speedup_vs_keras_predict"]),
            _ms(r["keras_tutorial_p50_ms"]),
            _x(r["speedup_vs_keras_tutorial"]),
            _ms(r["keras_call_p50_ms"]),
        ]
        for name, d in _models(report).items()
        for r in d["latency"]
    ]
    return (
        "## 1. Warm latency: the handler vs the usual Keras way (ms, one core)\n\n"
        "**handler**: `lambda_func.lambda_handler` on an HTTP API event (base64 body, routing, "
        "decode + resize, LiteRT, JSON answer, log line and metrics formatted). **Keras predict**: "
        "a TensorFlow process calling `model.predict(x)` on the same decoded pixels "
        "(`load_image`), decode not included. **Keras tutorial**: the whole usual request, PIL "
        "`open` / `convert('RGB')` / `resize` / `np.array` then `model.predict`. **Keras "
        "model(x)**: calling the model directly, what a TensorFlow server tuned for one image at "
        "a time would do instead of `predict` (for reference; no target uses it). The Keras "
        "figures do not depend on the quantisation and repeat on each row.\n\n"
        + _table(header, rows)
    )


def _floor(report: dict[str, Any]) -> str:
    rows = [
        [
            name,
            r["quantization"],
            r["input"],
            _ms(r["decode_p50_ms"]),
            _ms(r["invoke_p50_ms"]),
            _ms(r["floor_p50_ms"]),
            _ms(r["handler_p50_ms"]),
            _ms(r["overhead_p50_ms"]),
            f"{r['handler_over_floor']:.2f}",
        ]
        for name, d in _models(report).items()
        for r in d["latency"]
    ]
    peak = report["results"]["peak"]
    budget = report["meta"]["budget"]
    invoke_rows = [
        [
            name,
            r["quantization"],
            f"{r['macs'] / 1e6:.1f} M",
            _ms(r["invoke_p50_ms"]),
            f"{r['gmacs_per_second']:.1f}",
            f"{100 * r['fraction_of_fp32_peak']:.0f}%",
        ]
        for name, d in _models(report).items()
        for r in d["invoke"]
    ]
    return (
        "## 2. The floor: decode + resize and predict alone (ms, p50)\n\n"
        "decode = `imgclf.preprocess.load_image` (reduced-scale JPEG decoding, framing to the "
        "model's input as its manifest says); predict = `TFLiteModel.predict` on its pixels "
        "(input conversion, `invoke`, output). Overhead = handler - decode - predict: event "
        "parsing, base64, routing, JSON, logging and metrics.\n\n"
        + _table(
            [
                "model",
                "quantisation",
                "input",
                "decode",
                "predict",
                "floor",
                "handler",
                "overhead",
                "handler / floor",
            ],
            rows,
        )
        + f"\n\nHow close the invoke comes to the hardware: the core's float32 peak measured by "
        f"numpy ({peak['blas']}, one thread, {budget['peak_size']}x{budget['peak_size']} "
        f"matmul, best of {budget['peak_repeats']}) is **{peak['gflops']:.0f} GFLOP/s**. MACs "
        "count the model's convolutions and dense layers (from the TFLite ops and tensor "
        "shapes); fraction of peak = 2 x MACs / predict time / peak (int8 and dynamic models "
        "compute in integers, so their fraction of the float32 peak is only indicative; "
        "depthwise convolutions cannot reach a matmul's peak).\n\n"
        + _table(
            ["model", "quantisation", "MACs", "predict p50 (ms)", "GMAC/s", "of fp32 peak"],
            invoke_rows,
        )
    )


def _engines(report: dict[str, Any]) -> str:
    budget = report["meta"]["budget"]
    parts = [
        "## 3. Engines side by side: LiteRT vs ONNX Runtime vs Keras (ms, one core)\n\n"
        "The same Keras model, converted by `imgclf.pipeline.conversion` to each TFLite "
        "quantisation and by tf2onnx to ONNX (float32, opset 17); ONNX Runtime's int8 is "
        "`quantize_static` (QDQ, uint8 activations, int8 per-channel weights with reduce_range) "
        "calibrated on the very images the TFLite int8 model was calibrated on. LiteRT and ONNX "
        "Runtime run in one process with one thread each, timed in blocks "
        f"({budget['engine_block']} calls in a row, the first dropped, "
        f"{budget['engine_rounds']} rounds), from the same decoded uint8 pixels to "
        "probabilities (`TFLiteModel.predict`; `InferenceSession.run` on the pixels as "
        "float32); **invoke** is LiteRT's `set_tensor` + `invoke` alone. Keras is its own "
        "TensorFlow process (section 1, 640x480 input). **agreement**: top-1 agreement with "
        "Keras on the conversion's parity images, held to the parity gate `convert.py` holds the "
        "TFLite models to (float: 99% agreement; int8: at most 1 point of accuracy lost and 98% "
        "agreement, or without labels 95% agreement and the float top-1 in the top-5 on 99%). "
        "**uint8 in**: `predict` hands the decoded "
        "uint8 array to the interpreter unchanged (the int8 models' input is uint8 with scale 1 "
        "and zero point 0: no conversion, no copy).",
    ]
    for name, d in _models(report).items():
        measured = _measured(report, name)
        rows = [
            [
                r["engine"],
                r["variant"] + (" (served)" if r["served"] else ""),
                _ms(r["p50_ms"]),
                _ms(r["p99_ms"]),
                "" if r["invoke_p50_ms"] is None else _ms(r["invoke_p50_ms"]),
                _x2(r["vs_served"]),
                f"{r['bytes'] / 1e6:.1f}",
                _pct(r["agreement"]) + ("" if r["gate_passed"] else " (fails the gate)"),
                "yes" if r["uint8_pixels_unchanged"] else "",
            ]
            for r in d["engines"]
        ]
        e2e = d["e2e"]
        ways = e2e["ways"]
        e2e_rows = [["handler (LiteRT, the Lambda entry point)", _ms(ways["handler"])]]
        e2e_rows.append(["decode alone (`load_image`)", _ms(ways["decode"])])
        e2e_rows.append(["decode + LiteRT (served) + top-k", _ms(ways["litert"])])
        for way, value in ways.items():
            if way.startswith("onnx-"):
                variant = way.removeprefix("onnx-")
                e2e_rows.append([f"decode + ONNX Runtime {variant} + top-k", _ms(value)])
        conversion = measured["model"]["conversion_images"]
        parts.append(
            f"### {name}\n\n"
            + _table(
                [
                    "engine",
                    "variant",
                    "p50",
                    "p99",
                    "invoke p50",
                    "vs served",
                    "MB",
                    "agreement",
                    "uint8 in",
                ],
                rows,
            )
            + f"\n\nConversion images: {conversion}. Served quantisation: "
            f"`{measured['model']['bundled_quantization']}` "
            f"({measured['model']['quantization_reason'] or 'chosen when the model was built'})."
            f"\n\nThe whole request, {e2e['input']} (p50, same process):\n\n"
            + _table(["way", "p50 (ms)"], e2e_rows)
            + f"\n\nhandler / (decode + served predict) = "
            f"**{e2e['handler_over_decode_invoke']:.2f}**; served predict / fastest ONNX Runtime "
            f"variant that holds the parity gate ({e2e['best_gated_onnx']['variant']}) = "
            f"**{e2e['served_over_best_gated_onnx']:.2f}**; / fastest ONNX Runtime variant "
            f"({e2e['best_onnx']['variant']}) = **{e2e['served_over_best_onnx']:.2f}**."
        )
    return "\n\n".join(parts)


def _batch(report: dict[str, Any]) -> str:
    parts = []
    rule = None
    for name, d in _models(report).items():
        rule = d["batch"]["rule"]
        rows = [
            [
                r["size"],
                _ms(r["loop_p50_ms"]),
                _ms(r["batch_p50_ms"]),
                _ms(r["loop_per_image_ms"]),
                _ms(r["batch_per_image_ms"]),
                _x2(r["speedup"]),
                "" if r["size"] == 1 else f"{r['first_batch_call_ms']:.0f}",
                "" if r["size"] == 1 else f"{r['rss_added_mb']:.0f}",
                "yes" if r["same_as_loop"] else "**no**",
                "one invoke" if r["serving_batches"] else "loop",
            ]
            for r in d["batch"]["rows"]
        ]
        parts.append(
            f"### {name} ({d['batch']['quantization']})\n\n"
            + _table(
                [
                    "batch",
                    "loop p50",
                    "one invoke p50",
                    "loop per image",
                    "one invoke per image",
                    "one invoke faster",
                    "first batched call (ms)",
                    "RSS added (MB)",
                    "same answers",
                    "serving does",
                ],
                rows,
            )
        )
    assert rule is not None
    sizes = ", ".join(map(str, rule["batch_invoke_sizes"])) or "none"
    return (
        "## 4. Batches: one invoke over a batch dimension vs one invoke per image (ms)\n\n"
        "`TFLiteModel.predict_batch` on the served model: **loop** is one invoke per image on "
        "the batch-1 interpreter; **one invoke** is a second interpreter whose input was resized "
        "to the batch (`resize_tensor_input` + `allocate_tensors`, built on first use and kept "
        "per batch size: the first call's time and the memory it added are shown). Serving "
        "(`imgclf.serving.predict.answer`, `urls` / `images` batches) runs a batch as one invoke "
        f"only for the sizes in `imgclf.runtime.BATCH_INVOKE_SIZES` (now: {sizes}): a size goes "
        f"in when one invoke was measured at least {rule['min_speedup']:.2f}x faster than the "
        "loop for every bundled model; the targets check that rule against this run.\n\n"
        + "\n\n".join(parts)
    )


def _cold(report: dict[str, Any]) -> str:
    runs = report["meta"]["budget"]["cold_runs"]
    names = {"handler": "handler (LiteRT)", "keras": "TensorFlow + Keras"}
    rows = []
    for name, d in _models(report).items():
        cold = d["cold"]
        for side in ("handler", "keras"):
            rows.append(
                [
                    name,
                    names[side],
                    f"{cold[side]['to_first_answer_ms']:.0f}",
                    f"{cold[side].get('cpu_ms', float('nan')):.0f}",
                    f"{cold[side]['init_ms']:.0f}",
                    _ms(cold[side]["first_answer_ms"]),
                    f"{cold[side]['process_ms']:.0f}",
                    f"{cold[side]['peak_rss_mb']:.0f}",
                ]
            )
    retrain = report["derived"]["retrain_cold"]
    rows.append(
        [
            "(retrain function)",
            "`import retrain_handler`",
            f"{retrain['to_first_answer_ms']:.0f}",
            f"{retrain.get('cpu_ms', float('nan')):.0f}",
            f"{retrain['init_ms']:.0f}",
            "",
            f"{retrain['process_ms']:.0f}",
            f"{retrain['peak_rss_mb']:.0f}",
        ]
    )
    speedups = ", ".join(
        f"{name} {_x(d['cold']['speedup'])}" for name, d in _models(report).items()
    )
    stack = ", ".join(retrain["training_stack_imported"]) or "nothing of the training stack"
    first_input = next(iter(report["results"]["models"].values()))["cold"]["input"]
    return (
        f"## 5. Cold start (median of {runs} new processes, ms)\n\n"
        "From spawning `python` to the first answer: interpreter start, imports, model load "
        f"(the handler also runs its warm-up inference), then one `{first_input}` request. "
        "Files are in the page cache; Lambda adds its own sandbox and image start-up to both. "
        "The retrain function's row is its module's import (what its cold start runs before the "
        f"first event); it imported {stack}. **CPU time to it**: the process's user + system "
        "time at its first answer, which does not grow with the machine's load as the wall "
        "time does.\n\n"
        + _table(
            [
                "model",
                "",
                "to first answer",
                "CPU time to it",
                "imports + model load",
                "first request",
                "process incl. exit",
                "peak RSS (MB)",
            ],
            rows,
        )
        + f"\n\nThe handler reaches its first answer sooner by: {speedups}."
    )


def _footprint(report: dict[str, Any]) -> str:
    fp = report["results"]["footprint"]
    names = {"serving": "requirements-lambda.txt (this project)", "tensorflow": "TensorFlow stack"}
    rows = []
    for side in ("serving", "tensorflow"):
        dists = fp[side]["distributions"]
        largest = ", ".join(f"{n} {d['mb']:.0f}" for n, d in list(dists.items())[:4])
        rows.append([names[side], f"{fp[side]['installed_mb']:.0f}", len(dists), largest])
    files = []
    for name in _models(report):
        model = _measured(report, name)["model"]
        files.append([name, "model.keras", f"{model['keras_bytes'] / 1000:.0f}", "(reference)", ""])
        for q, f in model["quantizations"].items():
            accuracy = (
                ""
                if f["tflite_accuracy"] is None
                else f"{_pct(f['tflite_accuracy'])} (Keras {_pct(f['keras_accuracy'])})"
            )
            files.append(
                [
                    name,
                    f"model.tflite {q}",
                    f"{f['bytes'] / 1000:.0f}",
                    f"{_pct(f['top1_agreement_with_keras'])} of {f['parity_images']}",
                    accuracy,
                ]
            )
        for variant, f in model["onnx"].items():
            files.append(
                [
                    name,
                    f"ONNX {variant} (benchmark only)",
                    f"{f['bytes'] / 1000:.0f}",
                    f"{_pct(f['agreement'])} of {f['images']}",
                    "",
                ]
            )
    return (
        "## 6. Footprint\n\n"
        "Installed size: every file pip installed for the requirements and their dependencies "
        "(byte-code included), measured in `.venv`; the TensorFlow stack is `tensorflow-cpu`, "
        "Pillow and numpy at the versions this project pins. A web framework is counted on "
        "neither side; ONNX Runtime (requirements-bench.txt) is never in the serving set.\n\n"
        + _table(["stack", "installed MB", "distributions", "largest (MB)"], rows)
        + "\n\nModel files (top-1 agreement with Keras on the conversion's parity images):\n\n"
        + _table(["model", "file", "kB", "top-1 agreement with Keras", "accuracy"], files)
    )


def _load(report: dict[str, Any]) -> str:
    rows = [
        [
            run["workers"],
            run["users"],
            run["seconds"],
            run["total"]["requests"],
            run["total"]["failures"],
            f"{run['total']['rps']:.1f}",
            f"{run['total']['p50_ms']:.0f}",
            f"{run['total']['p95_ms']:.0f}",
            f"{run['total']['p99_ms']:.0f}",
        ]
        for run in report["results"]["load"]
    ]
    cpus = report["meta"]["machine"]["cpus"]
    return (
        "## 7. Throughput through the local stack (Locust, headless)\n\n"
        "`locustfile.py` (raw bytes, multipart, base64 JSON, URL downloads and health checks on "
        "the sample data's `seg_pred` images) against `python -m imgclf.local` with N gunicorn "
        f"workers (one Lambda execution environment each). Locust, the workers and the S3 "
        f"emulator share this machine's {cpus} CPUs, so the figures are those of the whole "
        "machine, not of one environment.\n\n"
        + _table(
            ["workers", "users", "s", "requests", "failures", "RPS", "p50 ms", "p95 ms", "p99 ms"],
            rows,
        )
    )


def _cost(report: dict[str, Any]) -> str:
    prices = report["results"]["cost"]["price_table"]
    rows = [
        [
            name,
            r["input"],
            f"{r['handler']['billed_ms']} ms / {r['handler']['memory_mb']} MB",
            _usd(r["handler"]["total_usd"]),
            f"{r['keras']['billed_ms']} ms / {r['keras']['memory_mb']} MB",
            _usd(r["keras"]["total_usd"]),
            _x(r["ratio"]),
        ]
        for name, d in _models(report).items()
        for r in d["cost"]
    ]
    return (
        "## 8. Cost of one million predictions on AWS Lambda\n\n"
        f"Lambda {prices['architecture']} {prices['region']}: ${prices['gb_second_usd']:.10f} per "
        f"GB-second and ${prices['per_million_requests_usd']:.2f} per million requests; "
        f"{prices['billing']} ({prices['source']}). Durations are the warm p50s measured above "
        "on one core of this machine (served quantisation; Keras: `model.predict`) and the "
        "memory is the template's PredictMemorySize for both (TensorFlow gets more only if its "
        "peak RSS needs it). API Gateway's own price is the same for both and is not "
        "included.\n\n"
        + _table(
            [
                "model",
                "input",
                "handler billed",
                "handler $/1M",
                "TensorFlow billed",
                "TensorFlow $/1M",
                "cheaper",
            ],
            rows,
        )
    )


def _curve(report: dict[str, Any], chart: str | None) -> str:
    memory = report["derived"]["memory"]
    cost_meta = report["results"]["cost"]
    parts = []
    method = ""
    for name, d in _models(report).items():
        if not d["curve"]:
            continue
        measured = _measured(report, name)["curve"]
        method = measured["method"]
        choice = d["memory"]
        rows = [
            [
                f"**{r['memory_mb']}**"
                if r["memory_mb"] == choice["memory_mb"]
                else r["memory_mb"],
                f"{r['share']:.2f}",
                _ms(r["p50_ms"]),
                _ms(r["p99_ms"]),
                f"${r['usd_per_million']:.2f}",
                "" if r["cpu_p50_ms"] is None else _ms(r["cpu_p50_ms"]),
                _ms(r["quiet_p50_ms"]),
                f"${r['quiet_usd_per_million']:.2f}",
                "below MinValue" if r["memory_mb"] < memory["floor_mb"] else "",
            ]
            for r in d["curve"]
        ]
        parts.append(
            f"### {name}\n\n"
            + _table(
                [
                    "memory MB",
                    "CPU share",
                    "wall p50 ms",
                    "wall p99 ms",
                    "wall $ / 1M",
                    "CPU ms p50",
                    "quiet-core p50 ms",
                    "quiet-core $ / 1M",
                    "",
                ],
                rows,
            )
            + f"\n\nQuiet core: cheapest allowed size {choice['cheapest_mb']} MB "
            f"(${choice['cheapest_usd']:.2f}); chosen **{choice['memory_mb']} MB** "
            f"(p50 {_ms(choice['p50_ms'])} ms, ${choice['usd_per_million']:.2f} per million)."
        )
    if not parts:
        return "## 9. Memory size: latency and price (not measured)"
    image = (
        f"![p50 latency and price per million against memory size]({chart})\n\n" if chart else ""
    )
    return (
        "## 9. Memory size: latency and price per million (what Lambda Power Tuning measures)\n\n"
        f"Lambda gives CPU in proportion to memory, one vCPU at {cost_meta['one_vcpu_mb']} MB. "
        "The handler ran back to back (one request after another, "
        f"{report['meta']['budget']['curve_requests']} timed per size, "
        f"{report['results']['models'][next(iter(_models(report)))]['curve']['input']}) in one "
        f"process pinned to one core under each size's CPU share, min(1, MB / "
        f"{cost_meta['one_vcpu_mb']}) (one thread uses one vCPU at most, so sizes above it "
        f"add nothing but price): {method}. The short period spreads each request over several "
        "periods, as sustained traffic is slowed; a lone request under a 100 ms period would fit "
        "in one period's quota and look fast. **wall**: the request's measured duration; on this "
        "shared machine it also waits for other processes on the core (load average above), "
        "which a Lambda vCPU does not. **quiet core**: the CPU time the request used under the "
        "quota (throttling's cache refills included) / the share, its duration on a core "
        "nothing else wants. The price is each request's duration rounded up to 1 ms (the mean "
        "of those) x memory, plus the request fee. **Choice**, from the quiet-core figures: "
        f"among sizes at or above the template's MinValue ({memory['floor_mb']} MB, the peak "
        "RSS of the worst admitted input), the cheapest price, then the fastest size within "
        f"{100 * cost_meta['price_tolerance']:.0f}% of it; the function serves every bundled "
        f"model, so it gets the largest size any model chose: **{memory['chosen_mb']} MB** "
        f"(the template's PredictMemorySize is {memory['template_mb']} MB).\n\n"
        + image
        + "\n\n".join(parts)
    )


def render_markdown(report: dict[str, Any], chart: str | None = None) -> str:
    """The whole report as Markdown, from the JSON alone (``chart``: the PNG's relative path)."""
    parts = [_header(report), _targets(report), _latency(report), _floor(report)]
    parts += [_engines(report), _batch(report), _cold(report), _footprint(report)]
    parts += [_load(report), _cost(report), _curve(report, chart)]
    return "\n\n".join(parts) + "\n"


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """Draws p50 latency and the price of a million predictions against memory size.

    Returns:
        False when no model has a curve (nothing is written).
    """
    curves = {name: d for name, d in _models(report).items() if d["curve"]}
    if not curves:
        return False
    import matplotlib  # noqa: PLC0415 - only the report's writer needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    memory = report["derived"]["memory"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for index, (name, d) in enumerate(curves.items()):
        sizes = [r["memory_mb"] for r in d["curve"]]
        style = {"color": f"C{index}"}
        quiet = f"{name}, quiet core (CPU time / share)"
        wall = f"{name}, wall time on this shared machine"
        top.plot(sizes, [r["quiet_p50_ms"] for r in d["curve"]], "o-", label=quiet, **style)
        top.plot(sizes, [r["p50_ms"] for r in d["curve"]], "x:", label=wall, **style)
        prices = [r["quiet_usd_per_million"] for r in d["curve"]]
        bottom.plot(sizes, prices, "o-", label=quiet, **style)
        bottom.plot(sizes, [r["usd_per_million"] for r in d["curve"]], "x:", label=wall, **style)
    for axis in (top, bottom):
        axis.axvspan(0, memory["floor_mb"], color="0.85", label=f"< MinValue {memory['floor_mb']}")
        if memory["chosen_mb"]:
            axis.axvline(
                memory["chosen_mb"],
                color="C3",
                linestyle="--",
                label=f"chosen {memory['chosen_mb']}",
            )
        axis.grid(True, alpha=0.3)
    top.set_yscale("log")
    top.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    top.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    top.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    top.set_ylabel("p50 latency per request (ms, log)")
    bottom.set_ylabel("$ per million predictions")
    bottom.set_xlabel("Lambda memory size (MB); CPU share = min(1, MB / 1769)")
    bottom.set_xlim(0, max(r["memory_mb"] for d in curves.values() for r in d["curve"]) + 100)
    top.legend(fontsize=7)
    meta = report["meta"]
    load = meta["machine"]["load_average_start"][0]
    top.set_title(
        f"Handler under CPU quotas, {meta['machine']['cpu_model']}, load {load:.1f}, "
        f"{meta['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Writes ``OUT.json``, ``OUT.md`` and ``OUT-memory.png`` (parent folders created).

    Returns:
        The Markdown and JSON paths.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    chart = out.with_name(out.name + CHART_SUFFIX)
    js.write_text(json.dumps(report, indent=1) + "\n")
    drawn = write_chart(report, chart)
    md.write_text(render_markdown(report, chart.name if drawn else None))
    return md, js


def headline(report: dict[str, Any]) -> str:
    """README's tables: this project vs the usual way for the default model, and the engines."""
    models = _models(report)
    default = report["results"]["default_model"]
    derived = models[default]
    bundled = _measured(report, default)["model"]["bundled_quantization"]
    rows = {r["input"]: r for r in derived["latency"] if r["quantization"] == bundled}
    cold, fp = derived["cold"], report["results"]["footprint"]
    money = next(r for r in derived["cost"] if r["input"] == HEADLINE_INPUT)
    lines = []
    for name in ("jpeg-150x150", "jpeg-1920x1080"):
        r = rows[name]
        lines.append(
            [
                f"warm request, {name.split('-')[1]} JPEG (p50)",
                f"{_ms(r['handler_p50_ms'])} ms",
                f"{_ms(r['keras_predict_p50_ms'])} ms",
                _x(r["speedup_vs_keras_predict"]),
            ]
        )
    ours, theirs = fp["serving"]["installed_mb"], fp["tensorflow"]["installed_mb"]
    lines += [
        [
            "cold start to first answer (median)",
            f"{cold['handler']['to_first_answer_ms']:.0f} ms",
            f"{cold['keras']['to_first_answer_ms']:.0f} ms",
            _x(cold["speedup"]),
        ],
        ["installed packages", f"{ours:.0f} MB", f"{theirs:.0f} MB", _x(theirs / ours)],
        [
            f"1M predictions on Lambda ({HEADLINE_INPUT.split('-')[1]} JPEG)",
            _usd(money["handler"]["total_usd"]),
            _usd(money["keras"]["total_usd"]),
            _x(money["ratio"]),
        ],
    ]
    meta = report["meta"]
    table = _table(
        ["one core", "this project (LiteRT handler)", "usual way (Keras `model.predict`)", "ratio"],
        lines,
    )
    engine_rows = []
    for name, d in models.items():
        by = {(r["engine"], r["variant"]): r for r in d["engines"]}
        served = next(r for r in d["engines"] if r["served"])
        onnx = [r for r in d["engines"] if r["engine"] == "ONNX Runtime"]
        keras_row = by.get(("Keras (TensorFlow)", "float32, model.predict"))
        engine_rows.append(
            [
                name,
                f"{_ms(served['p50_ms'])} ms ({served['variant']})",
                *[
                    f"{_ms(r['p50_ms'])} ms" + ("" if r["gate_passed"] else " (fails the gate)")
                    for r in onnx
                ],
                f"{_ms(keras_row['p50_ms'])} ms" if keras_row else "",
                f"{d['e2e']['handler_over_decode_invoke']:.2f}",
            ]
        )
    onnx_names = [
        r["variant"]
        for r in next(iter(models.values()))["engines"]
        if r["engine"] == "ONNX Runtime"
    ]
    engines = _table(
        [
            "model, p50 per image",
            "LiteRT (served)",
            *[f"ONNX Runtime {v}" for v in onnx_names],
            "Keras predict",
            "handler / (decode + predict)",
        ],
        engine_rows,
    )
    memory = report["derived"]["memory"]
    load = meta["machine"]["load_average_start"][0]
    simd = ", ".join(meta["machine"]["simd"])
    return (
        f"{table}\n\n{engines}\n\nDefault model `{default}` ({bundled}) on one core of an "
        f"{meta['machine']['cpu_model']} ({simd}; {meta['machine']['cpus']} CPUs, load average "
        f"{load:.1f} at the start), {meta['date'][:10]}, `{meta['command']}`. The handler column "
        "is the whole request (event, base64, decode, inference, JSON); the Keras column is "
        "`model.predict` alone, decode excluded. The engines table is one process per model, "
        f"from decoded pixels to probabilities. Memory: {memory['chosen_mb']} MB chosen from the "
        "latency / price curve. Every figure, the load test, the memory chart and the method: "
        "[docs/benchmarks.md](docs/benchmarks.md)."
    )


def update_readme(readme: Path, report: dict[str, Any]) -> None:
    """Replaces the text between the bench markers in ``readme`` with the headline table.

    Raises:
        ValueError: the markers are missing.
    """
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {START} ... {END} section")
    readme.write_text(text[: start + len(START)] + "\n" + headline(report) + "\n" + text[end:])


def rederive(report: dict[str, Any]) -> dict[str, Any]:
    """The report with its derived figures computed again from its measurements.

    The template's memory sizes are read again (they are settings, not measurements), so a report
    re-rendered after the template changed compares the new values with the same curve.
    """
    from benchmarks import cost  # noqa: PLC0415 - run imports this module
    from benchmarks.run import derive  # noqa: PLC0415

    template = PROJECT_ROOT / "template.yaml"
    results = report["results"]
    results["cost"]["template_memory_mb"] = cost.template_memory_mb(template)
    results["cost"]["template_min_memory_mb"] = cost.template_min_memory_mb(template)
    return {**report, "derived": derive(results, report["meta"]["machine"])}


def main(argv: list[str] | None = None) -> int:
    """``--readme``: copies the headline table from the JSON into README.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's bench section")
    parser.add_argument("--json", type=Path, default=DOCS_JSON, help="the benchmark JSON")
    parser.add_argument(
        "--rederive",
        action="store_true",
        help="recompute the derived figures (template sizes read again) and rewrite the report",
    )
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    if args.rederive:
        report = rederive(report)
        md, _ = write_report(report, args.json.with_suffix(""))
        print(f"{md} and its JSON and chart rewritten from the measurements in {args.json}")
    if args.readme:
        update_readme(README, report)
        print(f"README.md: benchmark table copied from {args.json}")
    else:
        sys.stdout.write(headline(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
