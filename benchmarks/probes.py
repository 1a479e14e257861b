"""What runs inside each benchmark process: ``python -m benchmarks.probes KIND SPEC.json OUT.json``.

The parent (``benchmarks.run``) starts one fresh process per configuration, pinned to one core,
and reads the figures back from ``OUT.json``. Kinds:

- ``serving``: ``lambda_func.lambda_handler`` on HTTP API events (MODEL_DIR, MODEL_NAME), and
  the two parts nothing can avoid, decode + resize (``load_image``) and the model's ``predict``;
- ``keras``: the usual way, a TensorFlow process calling ``model.predict`` per request;
- ``peak``: the core's float32 peak, as one-thread numpy matmuls reach it;
- ``prepare``: one bundled model converted to every TFLite quantisation and ONNX variant
  (``benchmarks.engines``; not timed, not pinned);
- ``engines``: LiteRT (every quantisation) beside ONNX Runtime (float32, int8) on the same pixels,
  and the whole request each way (the handler; decode + LiteRT; decode + ONNX Runtime);
- ``batch``: ``TFLiteModel.predict_batch`` as one invoke and as a loop, at batch 1, 4 and 8;
- ``quota``: back-to-back handler requests under the CPU share of each Lambda memory size
  (``benchmarks.quota``).

Only the ``keras`` and ``prepare`` kinds import TensorFlow, and only inside their functions;
``engines`` imports ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from benchmarks import quota as cpu_quota
from benchmarks.cost import ONE_VCPU_MB
from benchmarks.inputs import predict_event, summarize
from imgclf import artifact
from imgclf.preprocess import Framing, load_image
from imgclf.runtime import BATCH_INVOKE_MIN_SPEEDUP, BATCH_INVOKE_SIZES, TFLiteModel, find_runtime

WARMUP_CALLS = 5
Key = TypeVar("Key", bound=Hashable)
# The ops whose multiply-accumulates make up a CNN; pooling and activations are a rounding error.
_MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def time_round_robin(
    calls: dict[Key, Callable[[], Any]], iterations: int, warmup: int = WARMUP_CALLS
) -> dict[Key, list[float]]:
    """Times several calls in turn, one of each per round, so that they share the same noise.

    On a shared machine a burst of load then slows every call a little rather than one call
    a lot, and the ratios between them hold.

    Args:
        calls: what to time, by key.
        iterations: timed rounds (after ``warmup`` untimed ones).
        warmup: untimed rounds.

    Returns:
        The durations in milliseconds, by key.
    """
    samples: dict[Key, list[float]] = {key: [] for key in calls}
    for round_index in range(warmup + iterations):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            elapsed = (time.perf_counter() - start) * 1000
            if round_index >= warmup:
                samples[key].append(elapsed)
    return samples


def time_blocks(
    calls: dict[Key, Callable[[], Any]], rounds: int, block: int
) -> dict[Key, list[float]]:
    """Times several calls in blocks: ``block`` calls of one, then of the next, round after round.

    Blocks keep each engine's weights in the caches as a server calling one model would, while
    the rounds still spread any burst of load over every call. The first round is a warm-up and
    the first call of every block is dropped (it refills the caches).

    Args:
        calls: what to time, by key.
        rounds: timed rounds (after one untimed round).
        block: calls per key in a row (at least 2).

    Returns:
        ``rounds * (block - 1)`` durations in milliseconds per key.
    """
    samples: dict[Key, list[float]] = {key: [] for key in calls}
    for round_index in range(rounds + 1):
        for key, call in calls.items():
            for index in range(block):
                start = time.perf_counter()
                call()
                elapsed = (time.perf_counter() - start) * 1000
                if round_index > 0 and index > 0:
                    samples[key].append(elapsed)
    return samples


def rss_mb() -> float:
    """This process's resident set size now, in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def count_macs(model_content: bytes) -> int:
    """Multiply-accumulates of one inference of a TFLite model, from its ops and tensor shapes.

    Counts convolutions and fully connected layers, as TensorFlow's converter estimate does. The
    interpreter's op list is a private method, but it reads the very flatbuffer that is served.

    Args:
        model_content: the ``.tflite`` flatbuffer.

    Returns:
        The number of MACs.
    """
    interpreter = find_runtime().interpreter_class(model_content=model_content)
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()}
    macs = 0
    for op in interpreter._get_ops_details():
        if op["op_name"] not in _MAC_OPS:
            continue
        outputs = int(np.prod(shapes[op["outputs"][0]]))
        weights = shapes[op["inputs"][1]]
        if op["op_name"] == "CONV_2D":  # filter (out, kh, kw, in / groups)
            macs += outputs * weights[1] * weights[2] * weights[3]
        elif op["op_name"] == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, out)
            macs += outputs * weights[1] * weights[2]
        else:  # weights (out, in)
            macs += outputs * weights[1]
    return macs


def serving(spec: dict[str, Any]) -> dict[str, Any]:
    """Times the handler, decode + resize and predict on each input, with the model in MODEL_DIR.

    Args:
        spec: ``{"inputs": [{"name", "path", "media_type"}], "iterations"}``.

    Returns:
        Per input ``{"handler", "decode", "invoke"}`` summaries, the model's MACs, quantisation,
        runtime and the process's peak RSS.
    """
    import lambda_func  # noqa: PLC0415 - importing it loads the model (MODEL_DIR)

    settings = lambda_func.settings
    # The same files the handler loaded, in an interpreter of its own for the decode/invoke split.
    model_dir = settings.model_dir / settings.model_name
    loaded = artifact.load(artifact.read_dir(model_dir), settings.num_threads)
    model, limits = loaded.interpreter, settings.image_limits

    def handle(event: dict[str, Any]) -> None:
        response = lambda_func.lambda_handler(event, None)
        if response["statusCode"] != 200:
            raise RuntimeError(f"handler answered {response}")

    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    for item in spec["inputs"]:
        data = Path(item["path"]).read_bytes()
        event = predict_event(data, item["media_type"])
        pixels = load_image(data, model.height, model.width, limits, loaded.framing)
        calls[item["name"], "handler"] = lambda event=event: handle(event)
        calls[item["name"], "decode"] = lambda data=data: load_image(
            data, model.height, model.width, limits, loaded.framing
        )
        calls[item["name"], "invoke"] = lambda pixels=pixels: model.predict(pixels)
    # The log line and the metrics are still formatted per request, as in Lambda, then discarded.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        previous = lambda_func.logger.registered_handler.setStream(devnull)
        try:
            samples = time_round_robin(calls, spec["iterations"])
        finally:
            lambda_func.logger.registered_handler.setStream(previous)
    results: dict[str, dict[str, Any]] = {item["name"]: {} for item in spec["inputs"]}
    for (name, part), durations in samples.items():
        results[name][part] = summarize(durations)
    content = (model_dir / artifact.MODEL).read_bytes()
    return {
        "inputs": results,
        "macs": count_macs(content),
        "quantization": loaded.manifest.quantization,
        "runtime": {"name": model.runtime.name, "version": model.runtime.version},
        "peak_rss_mb": peak_rss_mb(),
    }


def keras(spec: dict[str, Any]) -> dict[str, Any]:
    """Times the usual way of serving the Keras model, in a one-thread TensorFlow process.

    Per input: ``tutorial`` (PIL open, convert RGB, resize, ``np.array``, ``model.predict``),
    ``predict`` (``model.predict`` on the array ``load_image`` returns, the same pixels the
    handler classifies) and ``call`` (``model(x)``, what a TensorFlow server tuned for one image
    at a time does instead of ``predict``).

    Args:
        spec: ``{"model_path", "inputs": [{"name", "path"}], "iterations", "framing"}``.

    Returns:
        Per input the three summaries, the TensorFlow version and the process's peak RSS.
    """
    import tensorflow as tf  # noqa: PLC0415 - the only kinds that need TensorFlow import it

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras  # noqa: PLC0415

    model = keras.models.load_model(spec["model_path"])
    height, width = model.input_shape[1:3]
    framing = Framing.parse(spec.get("framing", "squash_bilinear"))

    def tutorial(data: bytes) -> None:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height))
        x = np.expand_dims(np.array(img, dtype=np.float32), 0)
        model.predict(x, verbose=0)

    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    for item in spec["inputs"]:
        data = Path(item["path"]).read_bytes()
        x = load_image(data, height, width, framing=framing)[np.newaxis].astype(np.float32)
        calls[item["name"], "tutorial"] = lambda data=data: tutorial(data)
        calls[item["name"], "predict"] = lambda x=x: model.predict(x, verbose=0)
        calls[item["name"], "call"] = lambda x=x: model(x, training=False)
    results: dict[str, dict[str, Any]] = {item["name"]: {} for item in spec["inputs"]}
    for (name, way), durations in time_round_robin(calls, spec["iterations"], 3).items():
        results[name][way] = summarize(durations)
    return {"inputs": results, "tensorflow": tf.__version__, "peak_rss_mb": peak_rss_mb()}


def peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Measures the core's float32 peak with square matmuls (one BLAS thread, set by the parent).

    Args:
        spec: ``{"size", "repeats"}``.

    Returns:
        ``{"gflops"}``, the best of ``repeats`` timed matmuls, and the BLAS numpy uses.
    """
    n = spec["size"]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    best = min(time_round_robin({"matmul": lambda: a @ b}, spec["repeats"], 2)["matmul"]) / 1000
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return {"gflops": 2 * n**3 / best / 1e9, "blas": f"{blas['name']} {blas['version']}"}


def convert(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs ``convert.py`` (with ``--force``) once per quantisation into ``out/<quantisation>``.

    Args:
        spec: ``{"model_dir", "data", "out", "quantizations"}``.

    Returns:
        quantisation -> the model directory written, or the exit code when it failed.
    """
    from imgclf.pipeline import conversion  # noqa: PLC0415 - imports TensorFlow

    written = {}
    for quantization in spec["quantizations"]:
        out = Path(spec["out"]) / quantization
        args = ["--model-dir", spec["model_dir"], "--data", spec["data"], "--out", str(out)]
        code = conversion.main([*args, "--quantization", quantization, "--force"])
        written[quantization] = str(out) if code == 0 else code
    return written


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """``benchmarks.engines.prepare``: every TFLite quantisation and ONNX variant of one model."""
    from benchmarks import engines as engine_models  # noqa: PLC0415 - imports TensorFlow

    return engine_models.prepare(spec)


def _quiet_handler(lambda_func: Any) -> Callable[[dict[str, Any]], None]:
    """Calls the handler and checks its status (its log line is written to /dev/null)."""

    def handle(event: dict[str, Any]) -> None:
        response = lambda_func.lambda_handler(event, None)
        if response["statusCode"] != 200:
            raise RuntimeError(f"handler answered {response}")

    return handle


@contextlib.contextmanager
def _silenced(lambda_func: Any) -> Any:
    """Sends the handler's log lines and metrics to /dev/null (they are still formatted)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        previous = lambda_func.logger.registered_handler.setStream(devnull)
        try:
            yield
        finally:
            lambda_func.logger.registered_handler.setStream(previous)


def engines(spec: dict[str, Any]) -> dict[str, Any]:
    """LiteRT beside ONNX Runtime on one core, then the whole request each way.

    With the served model in MODEL_DIR / MODEL_NAME (the handler loads it). Per LiteRT
    quantisation: ``invoke`` (set_tensor of the prepared input + invoke) and ``predict``
    (``TFLiteModel.predict`` from uint8 pixels: input conversion, invoke, output); per ONNX
    variant: ``run`` (``InferenceSession.run`` from the same pixels as float32). End to end on
    one image: ``handler`` (the Lambda handler on an HTTP API event), ``decode`` (``load_image``),
    ``litert`` (decode + the served model + top-k) and ``onnx-<variant>`` (decode + ONNX Runtime
    + top-k), all in this process, timed in blocks (``time_blocks``).

    Args:
        spec: ``{"tflite": {quantisation: folder}, "onnx": {variant: path}, "input": {"path",
            "media_type"}, "rounds", "block", "top_k"}``.

    Returns:
        ``{"litert": {quantisation: {"invoke", "predict", "input", "uint8_pixels_unchanged"}},
        "onnx": {variant: {"run"}}, "e2e": {way: summary}, "versions"}``.
    """
    import onnxruntime  # noqa: PLC0415

    import lambda_func  # noqa: PLC0415 - importing it loads the served model
    from benchmarks.engines import onnx_session  # noqa: PLC0415

    settings = lambda_func.settings
    served = artifact.load(artifact.read_dir(settings.model_dir / settings.model_name))
    limits, framing, top_k = settings.image_limits, served.framing, spec["top_k"]
    data = Path(spec["input"]["path"]).read_bytes()
    event = predict_event(data, spec["input"]["media_type"])
    pixels = load_image(data, served.height, served.width, limits, framing)
    batch = pixels[np.newaxis]

    def rank(probs: np.ndarray) -> list[tuple[str, float]]:
        best = np.argsort(-probs, kind="stable")[:top_k]
        return [(served.labels[i], round(float(probs[i]), 6)) for i in best]

    calls: dict[tuple[str, str, str], Callable[[], Any]] = {}
    litert: dict[str, dict[str, Any]] = {}
    for quantization, folder in spec["tflite"].items():
        model = TFLiteModel((Path(folder) / artifact.MODEL).read_bytes())
        prepared = model._input_array(batch)
        interpreter, index = model._interpreter, model._input_index

        def invoke(interpreter: Any = interpreter, index: int = index, x: Any = prepared) -> None:
            interpreter.set_tensor(index, x)
            interpreter.invoke()

        calls["litert", quantization, "invoke"] = invoke
        calls["litert", quantization, "predict"] = lambda model=model: model.predict(pixels)
        litert[quantization] = {
            "input": model.input.as_dict(),
            # True when predict hands the decoded uint8 array to the interpreter as it is.
            "uint8_pixels_unchanged": prepared is batch,
        }
    sessions = {variant: onnx_session(Path(path)) for variant, path in spec["onnx"].items()}
    for variant, session in sessions.items():
        name = session.get_inputs()[0].name
        calls["onnx", variant, "run"] = lambda session=session, name=name: session.run(
            None, {name: batch.astype(np.float32)}
        )
    handle = _quiet_handler(lambda_func)

    def decode() -> np.ndarray:
        return load_image(data, served.height, served.width, limits, framing)

    calls["e2e", "handler", ""] = lambda: handle(event)
    calls["e2e", "decode", ""] = decode
    calls["e2e", "litert", ""] = lambda: rank(served.predict(decode()))
    for variant, session in sessions.items():
        name = session.get_inputs()[0].name
        calls["e2e", f"onnx-{variant}", ""] = lambda session=session, name=name: rank(
            session.run(None, {name: decode()[np.newaxis].astype(np.float32)})[0][0]
        )
    with _silenced(lambda_func):
        samples = time_blocks(calls, spec["rounds"], spec["block"])
    onnx: dict[str, dict[str, Any]] = {variant: {} for variant in sessions}
    e2e: dict[str, Any] = {}
    for (engine, variant, part), durations in samples.items():
        if engine == "litert":
            litert[variant][part] = summarize(durations)
        elif engine == "onnx":
            onnx[variant][part] = summarize(durations)
        else:
            e2e[variant] = summarize(durations)
    return {
        "litert": litert,
        "onnx": onnx,
        "e2e": e2e,
        "served_quantization": served.manifest.quantization,
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "litert": served.interpreter.runtime.version,
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def batch(spec: dict[str, Any]) -> dict[str, Any]:
    """``TFLiteModel.predict_batch`` as one invoke over a batch dimension and as a loop.

    Args:
        spec: ``{"model_dir", "sizes", "rounds", "block"}``.

    Returns:
        Per batch size ``{"loop", "batch", "first_batch_call_ms", "rss_added_mb"}`` (the first
        batched call builds that size's interpreter), and the serving rule
        (``imgclf.runtime.BATCH_INVOKE_SIZES``, ``BATCH_INVOKE_MIN_SPEEDUP``).
    """
    loaded = artifact.load(artifact.read_dir(Path(spec["model_dir"])))
    model = loaded.interpreter
    sizes = [int(n) for n in spec["sizes"]]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (max(sizes), model.height, model.width, 3), dtype=np.uint8)
    results: dict[str, dict[str, Any]] = {}
    calls: dict[tuple[int, str], Callable[[], Any]] = {}
    for n in sizes:
        before, start = rss_mb(), time.perf_counter()
        first = model.predict_batch(pixels[:n], batch_invoke=True)
        built = (time.perf_counter() - start) * 1000
        same = np.allclose(first, model.predict_batch(pixels[:n], batch_invoke=False), atol=1e-5)
        results[str(n)] = {
            "first_batch_call_ms": built,
            "rss_added_mb": rss_mb() - before,
            "same_as_loop": bool(same),
        }
        calls[n, "loop"] = lambda n=n: model.predict_batch(pixels[:n], batch_invoke=False)
        calls[n, "batch"] = lambda n=n: model.predict_batch(pixels[:n], batch_invoke=True)
    for (n, way), durations in time_blocks(calls, spec["rounds"], spec["block"]).items():
        results[str(n)][way] = summarize(durations)
    return {
        "sizes": results,
        "quantization": loaded.manifest.quantization,
        "rule": {
            "batch_invoke_sizes": sorted(BATCH_INVOKE_SIZES),
            "min_speedup": BATCH_INVOKE_MIN_SPEEDUP,
        },
    }


def quota(spec: dict[str, Any]) -> dict[str, Any]:
    """Back-to-back handler requests under the CPU share of each Lambda memory size.

    The handler (MODEL_DIR / MODEL_NAME) is imported and warmed up at full speed; the process then
    joins the cgroup (``spec["cgroup"]``) and, for each memory size, sets the group's quota to
    the size's share of one CPU (``min(1, MB / 1769)``: one thread uses one vCPU at most), sends a
    few untimed requests, then times ``requests`` in a row. Without a cgroup it times them once at
    full speed and the parent estimates.

    Args:
        spec: ``{"input": {"path", "media_type"}, "sizes", "requests", "warmup", "cgroup"}``.

    Returns:
        Per size the share, the quota written and the request durations' summary plus
        ``billed_ms_mean`` (each request rounded up to 1 ms as Lambda bills it); ``cpu``, the
        CPU time each request used, and ``quiet``, CPU time / share: what the request takes on a
        core nothing else wants (the wall time on a shared machine also waits for others).
    """
    import lambda_func  # noqa: PLC0415 - importing it loads the model

    data = Path(spec["input"]["path"]).read_bytes()
    event = predict_event(data, spec["input"]["media_type"])
    handle = _quiet_handler(lambda_func)
    group = cpu_quota.CpuGroup.from_dict(spec["cgroup"]) if spec["cgroup"] else None
    sizes = spec["sizes"] if group else [ONE_VCPU_MB]
    rows = []
    with _silenced(lambda_func):
        for _ in range(WARMUP_CALLS):
            handle(event)
        if group:
            group.join()
        for memory_mb in sizes:
            share = min(1.0, memory_mb / ONE_VCPU_MB)
            quota_us = group.set_share(share) if group else None
            for _ in range(spec["warmup"]):
                handle(event)
            durations, cpu = [], []
            for _ in range(spec["requests"]):
                start, start_cpu = time.perf_counter(), time.process_time()
                handle(event)
                cpu.append((time.process_time() - start_cpu) * 1000)
                durations.append((time.perf_counter() - start) * 1000)
            # CPU time / share: the duration on a core shared with nothing but the quota, as a
            # Lambda environment's vCPU is (the wall time here also waits for other processes).
            quiet = [c / share for c in cpu]
            rows.append(
                {
                    "memory_mb": memory_mb,
                    "share": share,
                    "quota_us": quota_us,
                    "billed_ms_mean": float(np.mean(np.ceil(durations))),
                    **summarize(durations),
                    "cpu": summarize(cpu),
                    "quiet": summarize(quiet),
                    "quiet_billed_ms_mean": float(np.mean(np.ceil(quiet))),
                }
            )
    return {"rows": rows, "period_us": cpu_quota.PERIOD_US, "peak_rss_mb": peak_rss_mb()}


PROBES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "serving": serving,
    "keras": keras,
    "peak": peak,
    "convert": convert,
    "prepare": prepare,
    "engines": engines,
    "batch": batch,
    "quota": quota,
}


def main(argv: list[str]) -> int:
    """``KIND SPEC.json OUT.json``: runs one probe and writes its result."""
    kind, spec_path, out_path = argv
    result = PROBES[kind](json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
