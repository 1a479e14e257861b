"""The benchmark report: Markdown rendered from the JSON, and README.md's headline table.

    python -m benchmarks.report --readme [--json docs/benchmarks.json]

rewrites the part of README.md between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` from the
JSON, so the README's figures are copied from a benchmark run, never typed.
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


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _x(value: float) -> str:
    return f"{value:.1f}x"


def _usd(value: float) -> str:
    return f"${value:.2f}"


def _header(report: dict[str, Any]) -> str:
    meta = report["meta"]
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    model = report["results"]["model"]
    bundled = model["bundled_quantization"]
    load_start = ", ".join(f"{x:.2f}" for x in m["load_average_start"])
    load_end = ", ".join(f"{x:.2f}" for x in m["load_average_end"])
    inputs = ", ".join(
        f"{k} ({v['bytes'] / 1000:.0f} kB)" for k, v in report["results"]["inputs"].items()
    )
    simd = ", ".join(m["simd"]) or "no AVX"
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{meta['command']}` on {meta['date']} (commit {meta['commit']}, budget "
        f"`{meta['budget']['name']}`, {meta['seconds']:.0f} s). Every figure below comes from "
        "`benchmarks.json`, written by the same run.",
        "",
        f"- **Machine:** {m['cpu_model']}, {m['cpus']} CPUs ({simd}), {m['memory_gb']} GB, "
        f"Linux {m['kernel']}, Python {m['python']}. Timed processes are pinned to CPU "
        f"{m['pinned_cpu']}, with one interpreter / BLAS / TensorFlow thread.",
        f"- **Load average** (1, 5, 15 min) at start: {load_start}; at end: {load_end}. On a busy "
        "machine absolute times rise; the calls compared within a process are timed in turn "
        "(one of each per round) so they share the noise, and ratios hold better than times.",
        f"- **Versions:** {versions}.",
        "- **Model:** the bundled `model.keras`, converted by `convert.py` to each quantisation; "
        f"the bundled `model.tflite` (sha256 `{model['sha256'][:12]}`) is `{bundled}`.",
        "- **Inputs:** photo-like synthetic images (gradients plus blurred noise), JPEG quality "
        f"90: {inputs}.",
    ]
    return "\n".join(lines)


def _targets(report: dict[str, Any]) -> str:
    rows = [
        [t["target"], f"{t['value']:.2f}", "met" if t["met"] else "**missed**", t["detail"]]
        for t in report["derived"]["targets"]
    ]
    bundled = report["results"]["model"]["bundled_quantization"]
    return f"## Targets (bundled model, {bundled}, one core)\n\n" + _table(
        ["target", "measured", "", "breakdown"], rows
    )


def _latency(report: dict[str, Any]) -> str:
    rows = [
        [
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
        for r in report["derived"]["latency"]
    ]
    header = [
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
            r["quantization"],
            r["input"],
            _ms(r["decode_p50_ms"]),
            _ms(r["invoke_p50_ms"]),
            _ms(r["floor_p50_ms"]),
            _ms(r["handler_p50_ms"]),
            _ms(r["overhead_p50_ms"]),
            f"{r['handler_over_floor']:.2f}",
        ]
        for r in report["derived"]["latency"]
    ]
    peak = report["results"]["peak"]
    budget = report["meta"]["budget"]
    invoke_rows = [
        [
            r["quantization"],
            f"{r['macs'] / 1e6:.1f} M",
            _ms(r["invoke_p50_ms"]),
            f"{r['gmacs_per_second']:.1f}",
            f"{100 * r['fraction_of_fp32_peak']:.0f}%",
        ]
        for r in report["derived"]["invoke"]
    ]
    return (
        "## 2. The floor: decode + resize and predict alone (ms, p50)\n\n"
        "decode = `imgclf.preprocess.load_image` (reduced-scale JPEG decoding, resize to the "
        "model's input); predict = `TFLiteModel.predict` on its pixels (input conversion, "
        "`invoke`, output). Overhead = handler - decode - predict: event parsing, base64, "
        "routing, JSON, logging and metrics.\n\n"
        + _table(
            [
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
        "compute in integers, so their fraction of the float32 peak is only indicative).\n\n"
        + _table(
            ["quantisation", "MACs", "predict p50 (ms)", "GMAC/s", "of fp32 peak"], invoke_rows
        )
    )


def _cold(report: dict[str, Any]) -> str:
    cold = report["derived"]["cold"]
    runs = report["meta"]["budget"]["cold_runs"]
    names = {"handler": "handler (LiteRT)", "keras": "TensorFlow + Keras"}
    rows = [
        [
            names[side],
            f"{cold[side]['to_first_answer_ms']:.0f}",
            f"{cold[side]['init_ms']:.0f}",
            _ms(cold[side]["first_answer_ms"]),
            f"{cold[side]['process_ms']:.0f}",
            f"{cold[side]['peak_rss_mb']:.0f}",
        ]
        for side in ("handler", "keras")
    ]
    return (
        f"## 3. Cold start (median of {runs} new processes, ms)\n\n"
        "From spawning `python` to the first answer: interpreter start, imports, model load "
        "(the handler also runs its warm-up inference), then one "
        f"`{report['results']['cold']['input']}` request. Files are in the page cache; Lambda "
        "adds its own sandbox and image start-up to both.\n\n"
        + _table(
            [
                "",
                "to first answer",
                "imports + model load",
                "first request",
                "process incl. exit",
                "peak RSS (MB)",
            ],
            rows,
        )
        + f"\n\nThe handler reaches its first answer **{_x(cold['speedup'])}** sooner."
    )


def _footprint(report: dict[str, Any]) -> str:
    fp = report["results"]["footprint"]
    names = {"serving": "requirements-lambda.txt (this project)", "tensorflow": "TensorFlow stack"}
    rows = []
    for side in ("serving", "tensorflow"):
        dists = fp[side]["distributions"]
        largest = ", ".join(f"{n} {d['mb']:.0f}" for n, d in list(dists.items())[:4])
        rows.append([names[side], f"{fp[side]['installed_mb']:.0f}", len(dists), largest])
    model = report["results"]["model"]
    files = [["model.keras", f"{model['keras_bytes'] / 1000:.0f}", "(reference)", ""]]
    for q, f in model["quantizations"].items():
        files.append(
            [
                f"model.tflite {q}",
                f"{f['bytes'] / 1000:.0f}",
                f"{100 * f['top1_agreement_with_keras']:.1f}%",
                f"{100 * f['tflite_accuracy']:.1f}% (Keras {100 * f['keras_accuracy']:.1f}%)",
            ]
        )
    parity_images = next(iter(model["quantizations"].values()))["parity_images"]
    return (
        "## 4. Footprint\n\n"
        "Installed size: every file pip installed for the requirements and their dependencies "
        "(byte-code included), measured in `.venv`; the TensorFlow stack is `tensorflow-cpu`, "
        "Pillow and numpy at the versions this project pins. A web framework is counted on "
        "neither side.\n\n"
        + _table(["stack", "installed MB", "distributions", "largest (MB)"], rows)
        + f"\n\nModel files (`convert.py` parity check on {parity_images} test images of the "
        "sample data):\n\n"
        + _table(["file", "kB", "top-1 agreement with Keras", "accuracy"], files)
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
        "## 5. Throughput through the local stack (Locust, headless)\n\n"
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
            r["input"],
            f"{r['handler']['billed_ms']} ms / {r['handler']['memory_mb']} MB",
            _usd(r["handler"]["total_usd"]),
            f"{r['keras']['billed_ms']} ms / {r['keras']['memory_mb']} MB",
            _usd(r["keras"]["total_usd"]),
            _x(r["ratio"]),
        ]
        for r in report["derived"]["cost"]
    ]
    keras_rss = report["results"]["keras"]["peak_rss_mb"]
    serving_rss = max(s["peak_rss_mb"] for s in report["results"]["serving"].values())
    return (
        "## 6. Cost of one million predictions on AWS Lambda\n\n"
        f"Lambda {prices['architecture']} {prices['region']}: ${prices['gb_second_usd']:.10f} per "
        f"GB-second and ${prices['per_million_requests_usd']:.2f} per million requests; "
        f"{prices['billing']} ({prices['source']}). Durations are the warm p50s measured above "
        "on one core of this machine (bundled quantisation; Keras: `model.predict`) and the "
        f"memory is the template's PredictMemorySize, one vCPU, for both: the peak RSS measured "
        f"was {serving_rss:.0f} MB for the handler and {keras_rss:.0f} MB for TensorFlow (a "
        "larger size is used only if the RSS needs it; a smaller one would give less than the "
        "one core the durations were measured on). API Gateway's own price is the same for "
        "both and is not included.\n\n"
        + _table(
            [
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


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown, from the JSON alone."""
    parts = [_header(report), _targets(report), _latency(report), _floor(report)]
    parts += [_cold(report), _footprint(report), _load(report), _cost(report)]
    return "\n\n".join(parts) + "\n"


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Writes ``OUT.json`` and ``OUT.md`` (parent folders created).

    Returns:
        The Markdown and JSON paths.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    js.write_text(json.dumps(report, indent=1) + "\n")
    md.write_text(render_markdown(report))
    return md, js


def headline(report: dict[str, Any]) -> str:
    """README's table: this project vs the usual way, for the bundled model."""
    derived = report["derived"]
    bundled = report["results"]["model"]["bundled_quantization"]
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
    load = meta["machine"]["load_average_start"][0]
    return (
        f"{table}\n\nBundled model ({bundled}) on one core of an {meta['machine']['cpu_model']} "
        f"({meta['machine']['cpus']} CPUs, load average {load:.1f} at the start), "
        f"{meta['date'][:10]}, `{meta['command']}`. The handler column is the whole request "
        "(event, base64, decode, inference, JSON); the Keras column is `model.predict` alone, "
        "decode excluded. Every figure, the load test and the method: "
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


def main(argv: list[str] | None = None) -> int:
    """``--readme``: copies the headline table from the JSON into README.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's bench section")
    parser.add_argument("--json", type=Path, default=DOCS_JSON, help="the benchmark JSON")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    if args.readme:
        update_readme(README, report)
        print(f"README.md: benchmark table copied from {args.json}")
    else:
        sys.stdout.write(headline(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
