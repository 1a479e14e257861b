"""``python -m benchmarks``: every figure of the benchmark report, measured in one run.

    python -m benchmarks                              # full budget -> reports/bench.{md,json}
    python -m benchmarks --budget tiny --out /tmp/b   # seconds instead of minutes (the test)
    python -m benchmarks --out docs/benchmarks        # the committed copy README.md links

Every timed side runs in a fresh process pinned to one core (``--cpu``, default the last one this
process may use), with one interpreter / BLAS / TensorFlow thread, one process per configuration:

1. warm latency through ``lambda_func.lambda_handler`` for each input and each quantisation
   ``convert.py`` offers (the bundled ``model.keras`` converted into a temporary folder), beside
   the same Keras model served the usual way (``model.predict`` per request in TensorFlow);
2. the floor: decode + resize (``load_image``) and the model's ``predict`` alone, and how close
   the invoke comes to the core's float32 peak (MACs of the model / invoke time / matmul peak);
3. cold start, a new process to its first answer, for both (median of several);
4. installed size of requirements-lambda.txt and of the TensorFlow stack, model file sizes;
5. Locust through the local stack (``python -m imgclf.local``) with 1 and 2 workers;
6. the Lambda price of a million predictions from the measured durations.
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
from benchmarks.inputs import INPUTS, predict_event, write_inputs
from benchmarks.report import write_report
from imgclf import artifact
from imgclf.artifact import Manifest
from imgclf.settings import PROJECT_ROOT

# imgclf.pipeline.conversion's, spelled again so that this process need not import TensorFlow.
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
COLD_INPUT = "jpeg-640x480"
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
VERSIONED = (
    "ai-edge-litert",
    "pillow",
    "numpy",
    "aws-lambda-powertools",
    "tensorflow-cpu",
    "keras",
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
    ),
    "tiny": Budget(
        iterations=5,
        keras_iterations=3,
        cold_runs=1,
        peak_size=256,
        peak_repeats=3,
        users=2,
        seconds=3,
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
    ) -> dict[str, float]:
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


def _machine(cpu: int) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), []
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "cpu_model": model or platform.processor(),
        "cpus": os.cpu_count(),
        "pinned_cpu": cpu,
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni") if f in flags],
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


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """The comparisons the report shows, computed from the measured figures only.

    Args:
        results: the raw measurements (``serving``, ``keras``, ``peak``, ``cold``, ``load``...).

    Returns:
        ``{"latency", "invoke", "cold", "cost", "targets"}``: table rows and medians.
    """
    keras_figures = results["keras"]["inputs"]
    peak_flops = results["peak"]["gflops"] * 1e9
    latency, invoke = [], []
    for quantization, serving in results["serving"].items():
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
                "fraction_of_fp32_peak": 2 * serving["macs"] / (first / 1000) / peak_flops,
            }
        )
    cold = {side: _median_of(runs) for side, runs in results["cold"]["runs"].items()}
    cold["speedup"] = cold["keras"]["to_first_answer_ms"] / cold["handler"]["to_first_answer_ms"]
    bundled = results["model"]["bundled_quantization"]
    return {
        "latency": latency,
        "invoke": invoke,
        "cold": cold,
        "cost": _costs(results, latency, bundled),
        "targets": _targets(results, latency, cold, bundled),
    }


def _costs(results: dict[str, Any], latency: list[dict[str, Any]], bundled: str) -> list[dict]:
    memory = results["cost"]["template_memory_mb"]
    keras_memory = cost.memory_for(results["keras"]["peak_rss_mb"], memory)
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


def _targets(
    results: dict[str, Any], latency: list[dict[str, Any]], cold: dict[str, Any], bundled: str
) -> list[dict[str, Any]]:
    rows = {r["input"]: r for r in latency if r["quantization"] == bundled}
    small, large = rows["jpeg-150x150"], rows["jpeg-1920x1080"]
    failures = sum(run["total"]["failures"] for run in results["load"])
    requests = sum(run["total"]["requests"] for run in results["load"])

    def target(name: str, value: float, limit: float, met: bool, detail: str) -> dict[str, Any]:
        return {"target": name, "value": value, "limit": limit, "met": met, "detail": detail}

    return [
        target(
            "handler p50 (150x150 JPEG) / (decode + invoke p50) <= 1.5",
            small["handler_over_floor"],
            1.5,
            small["handler_over_floor"] <= 1.5,
            f"handler {small['handler_p50_ms']:.2f} ms = decode {small['decode_p50_ms']:.2f} + "
            f"invoke {small['invoke_p50_ms']:.2f} + overhead {small['overhead_p50_ms']:.2f} ms",
        ),
        target(
            "Keras model.predict p50 / handler p50 (150x150 JPEG) >= 10",
            small["speedup_vs_keras_predict"],
            10.0,
            small["speedup_vs_keras_predict"] >= 10,
            f"Keras predict {small['keras_predict_p50_ms']:.1f} ms vs handler "
            f"{small['handler_p50_ms']:.2f} ms (Keras model(x): "
            f"{small['keras_call_p50_ms']:.1f} ms)",
        ),
        target(
            "handler p50 1920x1080 / 150x150 JPEG < 3",
            large["handler_p50_ms"] / small["handler_p50_ms"],
            3.0,
            large["handler_p50_ms"] < 3 * small["handler_p50_ms"],
            f"1920x1080 {large['handler_p50_ms']:.2f} ms (decode {large['decode_p50_ms']:.2f}) vs "
            f"150x150 {small['handler_p50_ms']:.2f} ms (decode {small['decode_p50_ms']:.2f})",
        ),
        target(
            "cold start TensorFlow / handler >= 5",
            cold["speedup"],
            5.0,
            cold["speedup"] >= 5,
            f"to first answer: TensorFlow {cold['keras']['to_first_answer_ms']:.0f} ms, handler "
            f"{cold['handler']['to_first_answer_ms']:.0f} ms",
        ),
        target(
            "failed requests in the Locust runs == 0",
            float(failures),
            0.0,
            failures == 0 and requests > 0,
            f"{failures} of {requests} requests failed",
        ),
    ]


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in VERSIONED}


def measure(
    budget: Budget, model_dir: Path, data: Path, workdir: Path, cpu: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Runs every part of the benchmark; returns the raw figures.

    Args:
        budget: how many measurements to make.
        model_dir: the bundled model directory (``model.keras`` is converted; cold start loads
            the directory as it is).
        data: the sample dataset (int8 calibration, parity, Locust's images).
        workdir: scratch space (converted models, images, logs).
        cpu: the core every timed process is pinned to.
        log: progress messages.

    Returns:
        The measurements, keyed by part.
    """
    runner = Runner(workdir, cpu)
    paths = write_inputs(workdir / "inputs")
    inputs = [
        {"name": item.name, "path": str(paths[item.name]), "media_type": item.media_type}
        for item in INPUTS
    ]
    manifest = Manifest.from_json((model_dir / artifact.MANIFEST).read_bytes())
    results: dict[str, Any] = {
        "inputs": {item.name: {"bytes": paths[item.name].stat().st_size} for item in INPUTS},
        "model": {
            "dir": str(model_dir),
            "sha256": manifest.sha256,
            "bundled_quantization": manifest.quantization,
            "keras_bytes": (model_dir / artifact.KERAS).stat().st_size,
        },
    }

    log("converting model.keras to every quantisation (convert.py --force)")
    converted = runner.probe(
        "convert",
        {
            "model_dir": str(model_dir),
            "data": str(data),
            "out": str(workdir / "models"),
            "quantizations": list(QUANTIZATIONS),
        },
        pinned=False,
    )
    results["model"]["quantizations"] = {q: _model_file(Path(out)) for q, out in converted.items()}

    log("measuring the core's float32 peak (numpy matmul, one thread)")
    results["peak"] = runner.probe(
        "peak", {"size": budget.peak_size, "repeats": budget.peak_repeats}
    )

    results["serving"] = {}
    for quantization, out in converted.items():
        log(f"warm handler, decode and predict: {quantization}")
        results["serving"][quantization] = runner.probe(
            "serving",
            {"inputs": inputs, "iterations": budget.iterations},
            env={"MODEL_DIR": out, "MODEL_REGISTRY_URI": ""},
        )

    log("the usual way: Keras model.predict in a TensorFlow process")
    results["keras"] = runner.probe(
        "keras",
        {
            "model_path": str(model_dir / "model.keras"),
            "inputs": inputs,
            "iterations": budget.keras_iterations,
        },
    )

    log(f"cold starts ({budget.cold_runs} per side, alternating)")
    cold_image = paths[COLD_INPUT]
    event_path = workdir / "cold-event.json"
    event_path.write_text(json.dumps(predict_event(cold_image.read_bytes(), "image/jpeg")))
    runs: dict[str, list[dict[str, float]]] = {"handler": [], "keras": []}
    serving_env = {"MODEL_DIR": str(model_dir), "MODEL_REGISTRY_URI": ""}
    for _ in range(budget.cold_runs):
        runs["handler"].append(runner.cold("handler", event_path, env=serving_env))
        runs["keras"].append(runner.cold("keras", cold_image, str(model_dir / "model.keras")))
    results["cold"] = {"input": COLD_INPUT, "runs": runs}

    log("installed sizes")
    results["footprint"] = {
        "serving": footprint.stack_footprint(
            footprint.read_requirements(PROJECT_ROOT / "requirements-lambda.txt")
        ),
        "tensorflow": footprint.stack_footprint(footprint.TENSORFLOW_STACK),
    }
    results["cost"] = {
        "template_memory_mb": cost.template_memory_mb(PROJECT_ROOT / "template.yaml"),
        "price_table": cost.PRICE_TABLE,
    }

    results["load"] = []
    for workers in budget.workers:
        log(f"Locust: {budget.users} users for {budget.seconds} s, {workers} gateway worker(s)")
        results["load"].append(
            load.locust_run(workers, budget.users, budget.seconds, data, workdir)
        )
    return results


def _model_file(model_dir: Path) -> dict[str, Any]:
    parity = Manifest.from_json((model_dir / artifact.MANIFEST).read_bytes()).parity
    return {
        "bytes": (model_dir / artifact.MODEL).stat().st_size,
        "top1_agreement_with_keras": parity["agreement"],
        "tflite_accuracy": parity["tflite_accuracy"],
        "keras_accuracy": parity["keras_accuracy"],
        "parity_images": parity["images"],
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and writes OUT.md and OUT.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument(
        "--out", type=Path, default=Path("reports/bench"), help="writes OUT.md and OUT.json"
    )
    parser.add_argument("--model-dir", type=Path, default=PROJECT_ROOT / "model")
    parser.add_argument(
        "--data",
        type=Path,
        default=PROJECT_ROOT / "data" / "sample",
        help="sample dataset (make sample-data)",
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
            budget, args.model_dir.resolve(), args.data.resolve(), Path(tmp), args.cpu, log
        )
    meta["machine"]["load_average_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - clock, 1)
    report = {"meta": meta, "results": results, "derived": derive(results)}
    md, js = write_report(report, args.out)
    print(f"wrote {md} and {js}")
    for row in report["derived"]["targets"]:
        verdict = "met " if row["met"] else "MISS"
        print(f"  {verdict} {row['target']}: {row['value']:.2f} ({row['detail']})")
    return 0
