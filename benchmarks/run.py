"""``python -m benchmarks``: every figure of the benchmark report, measured in one run.

    python -m benchmarks                              # full budget -> reports/bench.{md,json,png}
    python -m benchmarks --budget tiny --out /tmp/b   # seconds instead of minutes (the test)
    python -m benchmarks --out docs/benchmarks        # the committed copy README.md links

Every bundled model (``model/<name>/``, the default model first) is measured, each converted and
gated on the dataset it was trained on (``config.data`` of its ``metrics.json``: ``data/sample``,
``data/photos``; ``benchmarks.datasets``), while ``--data`` (the sample data) gives what all models
share: the local stack's seed data and Locust's request images (``seg_pred``). Every timed side runs
in a fresh process pinned to one core (``--cpu``, default the last one this process may use), with
one interpreter / BLAS / TensorFlow / ONNX Runtime thread, one process per configuration:

1. warm latency through ``lambda_func.lambda_handler`` for each input and each quantisation
   ``convert.py`` offers (the model's Keras source converted into a temporary folder), beside the
   same Keras model served the usual way (``model.predict`` per request in TensorFlow);
2. the floor: decode + resize (``load_image``) and the model's ``predict`` alone, and how close
   the invoke comes to the core's float32 peak (MACs of the model / invoke time / matmul peak);
3. engines side by side: LiteRT for every quantisation beside ONNX Runtime (tf2onnx float32 and
   static int8 calibrated on the TFLite int8's images), and the whole request each way;
4. batches of 1, 4 and 8 as one invoke and as a loop of single invokes;
5. cold start, a new process to its first answer, for both, and the retrain function's import;
6. installed size of requirements-lambda.txt and of the TensorFlow stack, model file sizes;
7. Locust through the local stack (``python -m imgclf.local``) with 1 and 2 workers;
8. the Lambda price of a million predictions from the measured durations, and the latency / price
   curve over memory sizes, measured under the CPU quota of each size (``benchmarks.quota``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import cost, footprint, load
from benchmarks import quota as cpu_quota
from benchmarks.datasets import model_dataset
from benchmarks.inputs import INPUTS, predict_event, write_inputs
from benchmarks.report import write_report
from imgclf import artifact
from imgclf.artifact import Manifest
from imgclf.settings import PROJECT_ROOT, ServeSettings

# imgclf.pipeline.conversion's, spelled again so that this process need not import TensorFlow.
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
ONNX_VARIANTS = ("float32", "int8")
COLD_INPUT = "jpeg-640x480"
# The image of the engine comparison's end-to-end rows and of the memory curve.
ENGINE_INPUT = COLD_INPUT
BATCH_SIZES = (1, 4, 8)
# The input size from which a model is held to the tighter handler / floor target.
LARGE_INPUT_SIDE = 224
# Instruction sets that decide how fast float and int8 kernels run (/proc/cpuinfo flags).
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# Keep every library on one thread: "one core" must hold for numpy's BLAS and TensorFlow too.
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "NUM_THREADS": "1",
}
# The conversions are not timed: let TensorFlow and ONNX Runtime's calibration use every core.
CONVERSION_ENV = {
    key: str(os.cpu_count() or 1)
    for key in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
}
# The retrain function's environment as the template sets it (no AWS call happens at import).
RETRAIN_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "DATA_BUCKET": "bench-data",
    "MODEL_REGISTRY_URI": "s3://bench-models/models",
    "RETRAIN_BACKEND": "lambda",
}
VERSIONED = (
    "ai-edge-litert",
    "pillow",
    "numpy",
    "aws-lambda-powertools",
    "tensorflow-cpu",
    "keras",
    "onnxruntime",
    "onnx",
    "tf2onnx",
    "locust",
    "gunicorn",
)


@dataclass(frozen=True)
class Budget:
    """How many measurements each part makes."""

    iterations: int  # timed handler / decode / predict calls per input and quantisation
    keras_iterations: int  # timed calls per input of each Keras way (predict costs ~50 ms)
    cold_runs: int  # new processes per side
    peak_size: int  # side of the square matmul measuring the core's peak
    peak_repeats: int
    users: int  # Locust users
    seconds: int  # Locust run time per worker count
    engine_rounds: int  # rounds of blocks in the engine and batch comparisons
    engine_block: int  # calls in a row per engine (the first of each is dropped)
    curve_requests: int  # timed back-to-back requests per memory size
    # At most this many calibration and parity images per conversion (None: as the build uses).
    conversion_images: int | None = None
    curve_sizes: tuple[int, ...] = cost.CURVE_SIZES_MB
    # Quantisations converted and served; the bundled model's own is always added.
    quantizations: tuple[str, ...] = QUANTIZATIONS
    workers: tuple[int, ...] = (1, 2)


BUDGETS = {
    "full": Budget(
        iterations=200,
        keras_iterations=50,
        cold_runs=5,
        peak_size=1024,
        peak_repeats=10,
        users=20,
        seconds=30,
        engine_rounds=20,
        engine_block=11,
        curve_requests=60,
    ),
    "tiny": Budget(
        iterations=5,
        keras_iterations=3,
        cold_runs=1,
        peak_size=256,
        peak_repeats=3,
        users=2,
        seconds=3,
        engine_rounds=1,
        engine_block=3,
        curve_requests=3,
        curve_sizes=(512, 1769),
        conversion_images=24,
        quantizations=("int8",),
    ),
}


class Runner:
    """Starts the benchmark's processes, pinned to one core, with their logs in ``workdir``."""

    def __init__(self, workdir: Path, cpu: int) -> None:
        self.workdir = workdir
        self.cpu = cpu
        self._count = 0

    def _pin(self) -> None:
        os.sched_setaffinity(0, {self.cpu})

    def _run(self, command: list[str], env: dict[str, str], pinned: bool, log: Path) -> None:
        with log.open("wb") as out:
            done = subprocess.run(
                command,
                cwd=PROJECT_ROOT,
                env={**os.environ, **ONE_THREAD_ENV, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=self._pin if pinned else None,
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")

    def probe(
        self,
        kind: str,
        spec: dict[str, Any],
        env: dict[str, str] | None = None,
        pinned: bool = True,
    ) -> dict[str, Any]:
        """Runs ``benchmarks.probes KIND`` in a new process and returns its result."""
        self._count += 1
        stem = self.workdir / f"{self._count:02d}-{kind}"
        spec_path, out_path = stem.with_suffix(".spec.json"), stem.with_suffix(".out.json")
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, "-m", "benchmarks.probes", kind, str(spec_path), str(out_path)]
        self._run(command, env or {}, pinned, stem.with_suffix(".log"))
        return json.loads(out_path.read_text())

    def cold(
        self, kind: str, input_path: Path, *extra: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """One cold start (``benchmarks.cold KIND INPUT OUT [EXTRA]``), to its first answer.

        Returns:
            The phases the process measured, plus ``to_first_answer_ms`` (from spawning it) and
            ``process_ms`` (spawn to exit).
        """
        self._count += 1
        stem = self.workdir / f"{self._count:02d}-cold-{kind}"
        out_path = stem.with_suffix(".out.json")
        command = [sys.executable, "-m", "benchmarks.cold", kind, str(input_path), str(out_path)]
        spawned = time.time()
        self._run([*command, *extra], env or {}, True, stem.with_suffix(".log"))
        exited = time.time()
        figures = json.loads(out_path.read_text())
        figures["to_first_answer_ms"] = (figures.pop("answered_at") - spawned) * 1000
        figures["process_ms"] = (exited - spawned) * 1000
        return figures


def cpu_flags() -> list[str]:
    """The flags of the first CPU in /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return next(
        (ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), []
    )


def _machine(cpu: int) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln), ""
    )
    flags = cpu_flags()
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cpu_model": model or platform.processor(),
        "cpus": os.cpu_count(),
        "pinned_cpu": cpu,
        "simd": [f for f in ISA_FLAGS if f in flags],
        "simd_absent": [f for f in ISA_FLAGS if f not in flags],
        "memory_gb": round(int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024 / 1e9, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


def _git_commit() -> str:
    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return run.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    return f"{commit} (with uncommitted changes)" if git("status", "--porcelain") else commit


def _median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        key: statistics.median(run[key] for run in runs)
        for key in runs[0]
        if isinstance(runs[0][key], int | float)
    }


def bundled_models(root: Path, names: list[str] | None = None) -> list[Path]:
    """The bundled model folders (``root/<name>/manifest.json``), the default model first.

    Args:
        root: the folder holding one folder per model (``model/``).
        names: only these models (None: all).

    Returns:
        The model folders.
    """
    default = ServeSettings().model_name
    found = sorted(p.parent for p in root.glob(f"*/{artifact.MANIFEST}"))
    if names:
        missing = set(names) - {p.name for p in found}
        if missing:
            raise ValueError(f"no bundled model {', '.join(sorted(missing))} in {root}")
        found = [p for p in found if p.name in names]
    return sorted(found, key=lambda p: (p.name != default, p.name))


# ---- derived figures ----------------------------------------------------------------------------


def derive(results: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """The comparisons the report shows, computed from the measured figures only.

    Args:
        results: the raw measurements (``models``, ``peak``, ``load``, ``cost``...).
        machine: the machine's description (its instruction sets explain missed targets).

    Returns:
        ``{"models": {name: {"latency", "invoke", "engines", "e2e", "batch", "cold", "cost",
        "curve", "memory"}}, "memory", "retrain_cold", "targets"}``.
    """
    peak_flops = results["peak"]["gflops"] * 1e9
    models = {
        name: _derive_model(measured, results, peak_flops)
        for name, measured in results["models"].items()
        if "skipped" not in measured
    }
    floor_mb = results["cost"]["template_min_memory_mb"]
    chosen = [m["memory"] for m in models.values() if m.get("memory")]
    memory = {
        "floor_mb": floor_mb,
        "template_mb": results["cost"]["template_memory_mb"],
        # The function serves every model: the largest size any of them chose.
        "chosen_mb": max((c["memory_mb"] for c in chosen), default=None),
    }
    retrain = results["retrain_cold"]
    derived = {
        "models": models,
        "memory": memory,
        "retrain_cold": {
            **_median_of(retrain["runs"]),
            "training_stack_imported": sorted(
                {m for run in retrain["runs"] for m in run["training_stack_imported"]}
            ),
        },
    }
    derived["targets"] = _targets(results, derived, machine)
    return derived


def _derive_model(measured: dict[str, Any], results: dict[str, Any], peak: float) -> dict:
    keras_figures = measured["keras"]["inputs"]
    bundled = measured["model"]["bundled_quantization"]
    latency, invoke = [], []
    for quantization, serving in measured["serving"].items():
        for name, figures in serving["inputs"].items():
            handler = figures["handler"]["p50"]
            floor = figures["decode"]["p50"] + figures["invoke"]["p50"]
            keras_way = keras_figures[name]
            latency.append(
                {
                    "quantization": quantization,
                    "input": name,
                    "handler_p50_ms": handler,
                    "handler_p99_ms": figures["handler"]["p99"],
                    "decode_p50_ms": figures["decode"]["p50"],
                    "invoke_p50_ms": figures["invoke"]["p50"],
                    "floor_p50_ms": floor,
                    "overhead_p50_ms": handler - floor,
                    "handler_over_floor": handler / floor,
                    "keras_predict_p50_ms": keras_way["predict"]["p50"],
                    "keras_tutorial_p50_ms": keras_way["tutorial"]["p50"],
                    "keras_call_p50_ms": keras_way["call"]["p50"],
                    "speedup_vs_keras_predict": keras_way["predict"]["p50"] / handler,
                    "speedup_vs_keras_tutorial": keras_way["tutorial"]["p50"] / handler,
                }
            )
        first = serving["inputs"][INPUTS[0].name]["invoke"]["p50"]
        invoke.append(
            {
                "quantization": quantization,
                "macs": serving["macs"],
                "invoke_p50_ms": first,
                "gmacs_per_second": serving["macs"] / (first / 1000) / 1e9,
                "fraction_of_fp32_peak": 2 * serving["macs"] / (first / 1000) / peak,
            }
        )
    cold = {side: _median_of(runs) for side, runs in measured["cold"]["runs"].items()}
    cold["speedup"] = cold["keras"]["to_first_answer_ms"] / cold["handler"]["to_first_answer_ms"]
    engines, e2e = _engines(measured)
    curve, memory = _curve(measured, results["cost"]["template_min_memory_mb"])
    return {
        "latency": latency,
        "invoke": invoke,
        "engines": engines,
        "e2e": e2e,
        "batch": _batch(measured["batch"]),
        "cold": cold,
        "cost": _costs(measured, results, latency, bundled),
        "curve": curve,
        "memory": memory,
    }


def _engines(measured: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every engine's p50 on the same pixels, relative to the served model's LiteRT predict."""
    eng = measured["engines"]
    bundled = measured["model"]["bundled_quantization"]
    served = eng["litert"][bundled]["predict"]["p50"]
    files = measured["model"]["quantizations"]
    rows = []
    for quantization, figures in eng["litert"].items():
        rows.append(
            {
                "engine": "LiteRT",
                "variant": quantization,
                "served": quantization == bundled,
                "p50_ms": figures["predict"]["p50"],
                "p99_ms": figures["predict"]["p99"],
                "invoke_p50_ms": figures["invoke"]["p50"],
                "bytes": files[quantization]["bytes"],
                "agreement": files[quantization]["top1_agreement_with_keras"],
                "uint8_pixels_unchanged": figures["uint8_pixels_unchanged"],
                "gate_passed": files[quantization]["gate_passed"],
            }
        )
    onnx_files = measured["model"]["onnx"]
    for variant, figures in eng["onnx"].items():
        rows.append(
            {
                "engine": "ONNX Runtime",
                "variant": variant,
                "served": False,
                "p50_ms": figures["run"]["p50"],
                "p99_ms": figures["run"]["p99"],
                "invoke_p50_ms": None,
                "bytes": onnx_files[variant]["bytes"],
                "agreement": onnx_files[variant]["agreement"],
                "uint8_pixels_unchanged": False,
                "gate_passed": onnx_files[variant]["gate_passed"],
            }
        )
    keras_input = measured["keras"]["inputs"][ENGINE_INPUT]
    for way, name in (("predict", "model.predict"), ("call", "model(x)")):
        rows.append(
            {
                "engine": "Keras (TensorFlow)",
                "variant": f"float32, {name}",
                "served": False,
                "p50_ms": keras_input[way]["p50"],
                "p99_ms": keras_input[way]["p99"],
                "invoke_p50_ms": None,
                "bytes": measured["model"]["keras_bytes"],
                "agreement": 1.0,
                "uint8_pixels_unchanged": False,
                "gate_passed": True,
            }
        )
    for row in rows:
        row["vs_served"] = row["p50_ms"] / served
    onnx_rows = [r for r in rows if r["engine"] == "ONNX Runtime"]
    best = min(onnx_rows, key=lambda r: r["p50_ms"])
    # The comparison that decides: ONNX Runtime variants that hold the parity gate the served
    # model held (one that fails it could not be served); float32 always holds it here.
    gated = [r for r in onnx_rows if r["gate_passed"]] or onnx_rows
    best_gated = min(gated, key=lambda r: r["p50_ms"])
    ways = eng["e2e"]
    decode = ways["decode"]["p50"]
    e2e = {
        "input": ENGINE_INPUT,
        "handler_p50_ms": ways["handler"]["p50"],
        "decode_p50_ms": decode,
        "served_predict_p50_ms": served,
        "handler_over_decode_invoke": ways["handler"]["p50"] / (decode + served),
        "ways": {way: figures["p50"] for way, figures in ways.items()},
        "best_onnx": {"variant": best["variant"], "p50_ms": best["p50_ms"]},
        "served_over_best_onnx": served / best["p50_ms"],
        "best_gated_onnx": {"variant": best_gated["variant"], "p50_ms": best_gated["p50_ms"]},
        "served_over_best_gated_onnx": served / best_gated["p50_ms"],
        "served_quantization": bundled,
    }
    return rows, e2e


def _batch(measured: dict[str, Any]) -> dict[str, Any]:
    """Per batch size: per-image times both ways, and whether one invoke beat the loop."""
    rule = measured["rule"]
    rows = []
    for size, figures in measured["sizes"].items():
        n = int(size)
        loop, batch = figures["loop"]["p50"], figures["batch"]["p50"]
        rows.append(
            {
                "size": n,
                "loop_p50_ms": loop,
                "batch_p50_ms": batch,
                "loop_per_image_ms": loop / n,
                "batch_per_image_ms": batch / n,
                "speedup": loop / batch,
                "faster": n > 1 and loop / batch >= rule["min_speedup"],
                "first_batch_call_ms": figures["first_batch_call_ms"],
                "rss_added_mb": figures["rss_added_mb"],
                "same_as_loop": figures["same_as_loop"],
                "serving_batches": n in rule["batch_invoke_sizes"],
            }
        )
    return {"rows": rows, "rule": rule, "quantization": measured["quantization"]}


def _curve(measured: dict[str, Any], floor_mb: int) -> tuple[list[dict], dict | None]:
    """Latency and price per memory size, and the size chosen.

    Each size has the wall-clock figures measured under its quota (``p50_ms``, ``usd_per_million``)
    and the quiet-core ones (``quiet_p50_ms``, ``quiet_usd_per_million``: CPU time / share, what the
    request takes when nothing but the quota holds it back, as on a Lambda vCPU). The choice is
    made from the quiet figures: on a shared benchmark machine the wall time at full share also
    waits for other processes, which would favour the small sizes for a reason Lambda does not have.
    """
    curve = measured.get("curve")
    if not curve:
        return [], None
    rows = []
    for row in curve["rows"]:
        quiet = row.get("quiet", {"p50": row["p50"], "p99": row["p99"]})
        quiet_billed = row.get("quiet_billed_ms_mean", row["billed_ms_mean"])
        rows.append(
            {
                "memory_mb": row["memory_mb"],
                "share": row["share"],
                "p50_ms": row["p50"],
                "p99_ms": row["p99"],
                "billed_ms_mean": row["billed_ms_mean"],
                "usd_per_million": cost.price_per_million(row["billed_ms_mean"], row["memory_mb"]),
                "cpu_p50_ms": row.get("cpu", {}).get("p50"),
                "quiet_p50_ms": quiet["p50"],
                "quiet_billed_ms_mean": quiet_billed,
                "quiet_usd_per_million": cost.price_per_million(quiet_billed, row["memory_mb"]),
                "estimated": row.get("estimated", False),
            }
        )
    basis = [
        {
            "memory_mb": r["memory_mb"],
            "p50_ms": r["quiet_p50_ms"],
            "usd_per_million": r["quiet_usd_per_million"],
        }
        for r in rows
    ]
    return rows, cost.choose_memory(basis, floor_mb)


def _costs(
    measured: dict[str, Any], results: dict[str, Any], latency: list[dict[str, Any]], bundled: str
) -> list[dict]:
    memory = results["cost"]["template_memory_mb"]
    keras_memory = cost.memory_for(measured["keras"]["peak_rss_mb"], memory)
    rows = []
    for row in latency:
        if row["quantization"] != bundled:
            continue
        ours = cost.cost_per_million(row["handler_p50_ms"], memory)
        theirs = cost.cost_per_million(row["keras_predict_p50_ms"], keras_memory)
        rows.append(
            {
                "input": row["input"],
                "handler": {"duration_ms": row["handler_p50_ms"], "memory_mb": memory, **ours},
                "keras": {
                    "duration_ms": row["keras_predict_p50_ms"],
                    "memory_mb": keras_memory,
                    **theirs,
                },
                "ratio": theirs["total_usd"] / ours["total_usd"],
            }
        )
    return rows


def _target(
    model: str, name: str, value: float, limit: float, met: bool, detail: str
) -> dict[str, Any]:
    return {
        "model": model,
        "target": name,
        "value": value,
        "limit": limit,
        "met": met,
        "detail": detail,
    }


def _engine_reason(measured: dict[str, Any], d: dict[str, Any], machine: dict[str, Any]) -> str:
    """Why the served model is or is not the fastest engine here, from the measured figures."""
    e2e = d["e2e"]
    rows = {(r["engine"], r["variant"]): r for r in d["engines"]}
    best, gated = e2e["best_onnx"], e2e["best_gated_onnx"]
    served = e2e["served_quantization"]
    has = ", ".join(machine["simd"]) or "none of them"
    lacks = ", ".join(machine["simd_absent"]) or "none"
    fastest = rows["ONNX Runtime", best["variant"]]
    text = (
        f"served LiteRT {served} {e2e['served_predict_p50_ms']:.2f} ms vs the fastest ONNX "
        f"Runtime variant that holds the parity gate, {gated['variant']} "
        f"{gated['p50_ms']:.2f} ms"
    )
    if best["variant"] != gated["variant"]:
        text += (
            f" (ONNX Runtime {best['variant']}, {best['p50_ms']:.2f} ms, fails it: top-1 "
            f"agreement with Keras {100 * fastest['agreement']:.1f}%)"
        )
    text += f". CPU flags: {has}; absent: {lacks}."
    if e2e["served_over_best_gated_onnx"] <= 1.0:
        return text
    lite_int8 = rows.get(("LiteRT", "int8"))
    if gated["variant"] == "int8" and served != "int8" and lite_int8:
        reason = measured["model"]["quantization_reason"] or f"{served} was chosen at build time"
        text += (
            " Why: ONNX Runtime's int8 runs its u8s8 kernels (AVX2 multiply-add into 16 bits), "
            f"while LiteRT's own int8 took {lite_int8['p50_ms']:.2f} ms here: XNNPACK's int8 "
            "convolutions gain little over float without VNNI dot products (avx512_vnni / "
            f"avx_vnni), which this CPU lacks; and the served model is {served} ({reason[:200]})."
        )
    elif gated["variant"] == "float32":
        text += (
            " Why: ONNX Runtime's float32 kernels (MLAS, AVX2 / FMA) are faster than XNNPACK's "
            f"on this network and CPU; the served {served} model computes in float32 too."
        )
    return text


def _targets(
    results: dict[str, Any], derived: dict[str, Any], machine: dict[str, Any]
) -> list[dict[str, Any]]:
    default = next(iter(derived["models"]), None)
    targets = []
    for name, d in derived["models"].items():
        measured = results["models"][name]
        rows = {
            r["input"]: r
            for r in d["latency"]
            if r["quantization"] == d["e2e"]["served_quantization"]
        }
        small, large = rows["jpeg-150x150"], rows["jpeg-1920x1080"]
        side = measured["model"]["input_side"]
        ratio_limit = 1.3 if side >= LARGE_INPUT_SIDE else 1.5
        targets += [
            _target(
                name,
                f"handler p50 (150x150 JPEG) / (decode + invoke p50) <= {ratio_limit}",
                small["handler_over_floor"],
                ratio_limit,
                small["handler_over_floor"] <= ratio_limit,
                f"handler {small['handler_p50_ms']:.2f} ms = decode {small['decode_p50_ms']:.2f}"
                f" + invoke {small['invoke_p50_ms']:.2f} + overhead "
                f"{small['overhead_p50_ms']:.2f} ms ({side}x{side} input)",
            ),
            _target(
                name,
                "served LiteRT predict p50 <= best gated ONNX Runtime run p50",
                d["e2e"]["served_over_best_gated_onnx"],
                1.0,
                d["e2e"]["served_over_best_gated_onnx"] <= 1.0,
                _engine_reason(measured, d, machine),
            ),
            _target(
                name,
                "Keras model.predict p50 / handler p50 (150x150 JPEG) >= 10",
                small["speedup_vs_keras_predict"],
                10.0,
                small["speedup_vs_keras_predict"] >= 10,
                f"Keras predict {small['keras_predict_p50_ms']:.1f} ms vs handler "
                f"{small['handler_p50_ms']:.2f} ms (Keras model(x): "
                f"{small['keras_call_p50_ms']:.1f} ms)",
            ),
            _target(
                name,
                "handler p50 1920x1080 / 150x150 JPEG < 3",
                large["handler_p50_ms"] / small["handler_p50_ms"],
                3.0,
                large["handler_p50_ms"] < 3 * small["handler_p50_ms"],
                f"1920x1080 {large['handler_p50_ms']:.2f} ms (decode "
                f"{large['decode_p50_ms']:.2f}) vs 150x150 {small['handler_p50_ms']:.2f} ms "
                f"(decode {small['decode_p50_ms']:.2f})",
            ),
            _target(
                name,
                "cold start TensorFlow / handler >= 5",
                d["cold"]["speedup"],
                5.0,
                d["cold"]["speedup"] >= 5,
                f"to first answer: TensorFlow {d['cold']['keras']['to_first_answer_ms']:.0f} ms, "
                f"handler {d['cold']['handler']['to_first_answer_ms']:.0f} ms",
            ),
        ]
        if name == default:
            first = d["cold"]["handler"]["to_first_answer_ms"]
            targets.append(
                _target(
                    name,
                    "cold start to first answer (default model) < 500 ms",
                    first,
                    500.0,
                    first < 500,
                    f"median of {len(measured['cold']['runs']['handler'])} new processes: "
                    f"imports + model load {d['cold']['handler']['init_ms']:.0f} ms, first "
                    f"request {d['cold']['handler']['first_answer_ms']:.1f} ms; CPU time to the "
                    f"first answer {d['cold']['handler'].get('cpu_ms', float('nan')):.0f} ms "
                    "(the wall time also waits for the other processes of a loaded machine)",
                )
            )
    rule_sizes = set(next(iter(derived["models"].values()))["batch"]["rule"]["batch_invoke_sizes"])
    faster = [
        {r["size"] for r in d["batch"]["rows"] if r["faster"]} for d in derived["models"].values()
    ]
    measured_sizes = set.intersection(*faster) if faster else set()
    speedups = "; ".join(
        f"{name}: "
        + ", ".join(
            f"{r['size']}: {r['speedup']:.2f}x" for r in d["batch"]["rows"] if r["size"] > 1
        )
        for name, d in derived["models"].items()
    )
    targets.append(
        _target(
            "all",
            "serving's batch rule (BATCH_INVOKE_SIZES) == sizes measured >= "
            f"{next(iter(derived['models'].values()))['batch']['rule']['min_speedup']:.2f}x faster",
            float(len(measured_sizes ^ rule_sizes)),
            0.0,
            measured_sizes == rule_sizes,
            f"rule {sorted(rule_sizes) or 'none'}, measured {sorted(measured_sizes) or 'none'} "
            f"(one invoke vs loop, by batch size: {speedups})",
        )
    )
    memory = derived["memory"]
    if memory["chosen_mb"] is not None:
        targets.append(
            _target(
                "all",
                "template PredictMemorySize == the memory curve's choice (>= MinValue)",
                float(memory["template_mb"]),
                float(memory["chosen_mb"]),
                memory["template_mb"] == memory["chosen_mb"]
                and memory["chosen_mb"] >= memory["floor_mb"],
                f"template {memory['template_mb']} MB, chosen {memory['chosen_mb']} MB, floor "
                f"(template MinValue, from peak RSS) {memory['floor_mb']} MB",
            )
        )
    retrain = derived["retrain_cold"]
    targets.append(
        _target(
            "retrain",
            "retrain function's import loads no training stack",
            float(len(retrain["training_stack_imported"])),
            0.0,
            not retrain["training_stack_imported"],
            f"import retrain_handler {retrain['init_ms']:.0f} ms, to first answer "
            f"{retrain['to_first_answer_ms']:.0f} ms; training modules loaded: "
            f"{', '.join(retrain['training_stack_imported']) or 'none'}",
        )
    )
    failures = sum(run["total"]["failures"] for run in results["load"])
    requests = sum(run["total"]["requests"] for run in results["load"])
    targets.append(
        _target(
            "all",
            "failed requests in the Locust runs == 0",
            float(failures),
            0.0,
            failures == 0 and requests > 0,
            f"{failures} of {requests} requests failed",
        )
    )
    return targets


# ---- measurements -------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _serve(model_dir: Path) -> dict[str, str]:
    """The environment that makes the handler serve the model folder ``model_dir``."""
    return {
        "MODEL_DIR": str(model_dir.parent),
        "MODEL_NAME": model_dir.name,
        "MODEL_REGISTRY_URI": "",
    }


def _model_file(model_dir: Path) -> dict[str, Any]:
    manifest = Manifest.from_json((model_dir / artifact.MANIFEST).read_bytes())
    parity = manifest.parity
    candidate = manifest.gate.get("candidates", {}).get(manifest.quantization, {})
    return {
        "gate_passed": bool(candidate.get("passed", True)),
        "bytes": (model_dir / artifact.MODEL).stat().st_size,
        "top1_agreement_with_keras": parity["agreement"],
        "tflite_accuracy": parity.get("tflite_accuracy"),
        "keras_accuracy": parity.get("keras_accuracy"),
        "parity_images": parity["images"],
    }


def _curve_probe(
    runner: Runner,
    budget: Budget,
    model_dir: Path,
    engine_input: dict[str, str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The handler's latency under each memory size's CPU quota (or an estimate without one)."""
    group, how = cpu_quota.create(f"imgclf-bench-{os.getpid()}")
    log(f"memory curve: {len(budget.curve_sizes)} sizes, {how}")
    try:
        measured = runner.probe(
            "quota",
            {
                "input": engine_input,
                "sizes": list(budget.curve_sizes),
                "requests": budget.curve_requests,
                "warmup": 2,
                "cgroup": group.as_dict() if group else None,
            },
            env=_serve(model_dir),
        )
    finally:
        if group:
            cpu_quota.remove(group)
    if group is None:
        # No writable cgroup: one vCPU measured, slower sizes scaled by their CPU share.
        full = measured["rows"][0]
        rows = []
        for memory_mb in budget.curve_sizes:
            share = min(1.0, memory_mb / cost.ONE_VCPU_MB)
            rows.append(
                {
                    "memory_mb": memory_mb,
                    "share": share,
                    "quota_us": None,
                    "p50": full["p50"] / share,
                    "p99": full["p99"] / share,
                    "billed_ms_mean": float(int(full["p50"] / share) + 1),
                    "quiet": {
                        "p50": full["quiet"]["p50"] / share,
                        "p99": full["quiet"]["p99"] / share,
                    },
                    "quiet_billed_ms_mean": float(int(full["quiet"]["p50"] / share) + 1),
                    "estimated": True,
                }
            )
        measured["rows"] = rows
    measured["method"] = how if group else f"estimated (no CPU quota available: {how})"
    measured["input"] = ENGINE_INPUT
    return measured


def measure_model(
    runner: Runner,
    budget: Budget,
    model_dir: Path,
    dataset: Path | None,
    inputs: list[dict[str, str]],
    paths: dict[str, Path],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every per-model part of the benchmark for one bundled model folder.

    ``dataset`` is the one the model was trained on (``benchmarks.datasets.model_dataset``; None
    for the pretrained model): its conversion calibrates and gates on it.
    """
    name = model_dir.name
    manifest = Manifest.from_json((model_dir / artifact.MANIFEST).read_bytes())
    bundled = manifest.quantization
    side = int(manifest.input.get("shape", [1, 0])[1])
    quantizations = [q for q in QUANTIZATIONS if q in budget.quantizations or q == bundled]
    log(f"{name}: converting its Keras model to {', '.join(quantizations)} and to ONNX")
    work = runner.workdir / name
    prepared = runner.probe(
        "prepare",
        {
            "name": name,
            "model_dir": str(model_dir),
            "data": str(dataset) if dataset else None,
            "out": str(work),
            "quantizations": quantizations,
            "max_images": budget.conversion_images,
        },
        # Not timed: TensorFlow may use every core here.
        env=CONVERSION_ENV,
        pinned=False,
    )
    if "skipped" in prepared:
        log(f"{name}: skipped, {prepared['skipped']}")
        return {"skipped": prepared["skipped"]}
    converted = {q: Path(folder) for q, folder in prepared["tflite"].items()}
    measured: dict[str, Any] = {
        "model": {
            "dir": str(model_dir),
            "sha256": manifest.sha256,
            "bundled_quantization": bundled,
            "quantization_reason": manifest.quantization_reason,
            "framing": manifest.framing,
            "input_side": side,
            "keras_path": prepared["keras_path"],
            "keras_bytes": prepared["keras_bytes"],
            "conversion_images": prepared["source"],
            "quantizations": {q: _model_file(folder) for q, folder in converted.items()},
            "onnx": prepared["onnx"],
        }
    }
    # Serving reads the folder's name as the model's: each quantisation in its own <name>/.
    served_dirs = {}
    for quantization, folder in converted.items():
        served_dirs[quantization] = work / "serve" / quantization / name
        served_dirs[quantization].parent.mkdir(parents=True, exist_ok=True)
        folder.rename(served_dirs[quantization])

    measured["serving"] = {}
    for quantization, folder in served_dirs.items():
        log(f"{name}: warm handler, decode and predict, {quantization}")
        measured["serving"][quantization] = runner.probe(
            "serving",
            {"inputs": inputs, "iterations": budget.iterations},
            env=_serve(folder),
        )

    log(f"{name}: the usual way, Keras model.predict in a TensorFlow process")
    measured["keras"] = runner.probe(
        "keras",
        {
            "model_path": prepared["keras_path"],
            "inputs": inputs,
            "iterations": budget.keras_iterations,
            "framing": manifest.framing,
        },
    )

    engine_input = next(i for i in inputs if i["name"] == ENGINE_INPUT)
    log(f"{name}: LiteRT beside ONNX Runtime, one process")
    measured["engines"] = runner.probe(
        "engines",
        {
            "tflite": {q: str(folder) for q, folder in served_dirs.items()},
            "onnx": {v: figures["path"] for v, figures in prepared["onnx"].items()},
            "input": engine_input,
            "rounds": budget.engine_rounds,
            "block": budget.engine_block,
            "top_k": ServeSettings().default_top_k,
        },
        env=_serve(model_dir),
    )

    log(f"{name}: batches of {', '.join(map(str, BATCH_SIZES))}, one invoke vs a loop")
    measured["batch"] = runner.probe(
        "batch",
        {
            "model_dir": str(model_dir),
            "sizes": list(BATCH_SIZES),
            "rounds": budget.engine_rounds,
            "block": max(3, budget.engine_block // 2),
        },
    )

    log(f"{name}: cold starts ({budget.cold_runs} per side, alternating)")
    cold_image = paths[COLD_INPUT]
    event_path = runner.workdir / "cold-event.json"
    event_path.write_text(json.dumps(predict_event(cold_image.read_bytes(), "image/jpeg")))
    runs: dict[str, list[dict[str, Any]]] = {"handler": [], "keras": []}
    for _ in range(budget.cold_runs):
        runs["handler"].append(runner.cold("handler", event_path, env=_serve(model_dir)))
        runs["keras"].append(runner.cold("keras", cold_image, prepared["keras_path"]))
    measured["cold"] = {"input": COLD_INPUT, "runs": runs}

    measured["curve"] = _curve_probe(runner, budget, model_dir, engine_input, log)
    return measured


def measure(
    budget: Budget,
    model_dirs: list[Path],
    datasets: dict[str, Path | None],
    data: Path,
    workdir: Path,
    cpu: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Runs every part of the benchmark; returns the raw figures.

    Args:
        budget: how many measurements to make.
        model_dirs: the bundled model folders, the default model first (Locust and the README
            headline use it).
        datasets: model name -> the dataset it was trained on (None: pretrained), which its
            conversion calibrates and gates on.
        data: the sample dataset all models share: the local stack's seed data and Locust's
            request images (``seg_pred``).
        workdir: scratch space (converted models, images, logs).
        cpu: the core every timed process is pinned to.
        log: progress messages.

    Returns:
        The measurements, keyed by part (``models`` per bundled model).
    """
    runner = Runner(workdir, cpu)
    paths = write_inputs(workdir / "inputs")
    inputs = [
        {"name": item.name, "path": str(paths[item.name]), "media_type": item.media_type}
        for item in INPUTS
    ]
    results: dict[str, Any] = {
        "inputs": {item.name: {"bytes": paths[item.name].stat().st_size} for item in INPUTS},
        "default_model": model_dirs[0].name,
    }
    log("measuring the core's float32 peak (numpy matmul, one thread)")
    results["peak"] = runner.probe(
        "peak", {"size": budget.peak_size, "repeats": budget.peak_repeats}
    )
    results["cost"] = {
        "template_memory_mb": cost.template_memory_mb(PROJECT_ROOT / "template.yaml"),
        "template_min_memory_mb": cost.template_min_memory_mb(PROJECT_ROOT / "template.yaml"),
        "price_table": cost.PRICE_TABLE,
        "one_vcpu_mb": cost.ONE_VCPU_MB,
        "price_tolerance": cost.PRICE_TOLERANCE,
    }
    results["models"] = {}
    for model_dir in model_dirs:
        results["models"][model_dir.name] = measure_model(
            runner, budget, model_dir, datasets[model_dir.name], inputs, paths, log
        )

    log(f"retrain function cold starts ({budget.cold_runs}): import retrain_handler")
    results["retrain_cold"] = {
        "runs": [
            runner.cold("retrain", Path(os.devnull), env=RETRAIN_ENV)
            for _ in range(budget.cold_runs)
        ]
    }

    log("installed sizes")
    results["footprint"] = {
        "serving": footprint.stack_footprint(
            footprint.read_requirements(PROJECT_ROOT / "requirements-lambda.txt")
        ),
        "tensorflow": footprint.stack_footprint(footprint.TENSORFLOW_STACK),
    }

    results["load"] = []
    for workers in budget.workers:
        log(f"Locust: {budget.users} users for {budget.seconds} s, {workers} gateway worker(s)")
        results["load"].append(
            load.locust_run(workers, budget.users, budget.seconds, data, workdir)
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and writes OUT.md, OUT.json and the memory chart OUT-memory.png."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument(
        "--out", type=Path, default=Path("reports/bench"), help="writes OUT.md and OUT.json"
    )
    parser.add_argument(
        "--model-root",
        type=Path,
        default=PROJECT_ROOT / "model",
        help="the bundled models, one folder each",
    )
    parser.add_argument("--models", nargs="*", help="only these bundled models (default: all)")
    parser.add_argument(
        "--data",
        type=Path,
        default=PROJECT_ROOT / "data" / "sample",
        help="sample dataset (make sample-data): the local stack's seed data and Locust's "
        "requests (seg_pred); each model converts on its own dataset (config.data)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=PROJECT_ROOT,
        help="what the config.data of each model's metrics.json is relative to",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help="the core timed processes are pinned to",
    )
    args = parser.parse_args(argv)
    if not (args.data / "seg_pred").is_dir():
        parser.error(f"{args.data} has no seg_pred/: run `make sample-data` first")
    try:
        model_dirs = bundled_models(args.model_root.resolve(), args.models)
        # Every model's own dataset, checked before anything is measured (DatasetMissing says
        # which make target builds it).
        datasets = {d.name: model_dataset(d, args.data_root.resolve()) for d in model_dirs}
    except ValueError as exc:
        parser.error(str(exc))
    if not model_dirs:
        parser.error(f"no bundled model (<name>/manifest.json) in {args.model_root}")
    budget = BUDGETS[args.budget]
    started = datetime.now(UTC)
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget": {"name": args.budget, **asdict(budget)},
        "machine": _machine(args.cpu),
        "versions": _versions(),
        "commit": _git_commit(),
    }

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - clock:5.0f} s] {message}", flush=True)

    clock = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        results = measure(
            budget, model_dirs, datasets, args.data.resolve(), Path(tmp), args.cpu, log
        )
    meta["machine"]["load_average_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - clock, 1)
    report = {"meta": meta, "results": results, "derived": derive(results, meta["machine"])}
    md, js = write_report(report, args.out)
    print(f"wrote {md} and {js}")
    for row in report["derived"]["targets"]:
        verdict = "met " if row["met"] else "MISS"
        print(f"  {verdict} [{row['model']}] {row['target']}: {row['value']:.2f}")
    return 0
