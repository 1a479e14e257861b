"""What runs inside each benchmark process: ``python -m benchmarks.probes KIND SPEC.json OUT.json``.

The parent (``benchmarks.run``) starts one fresh process per configuration, pinned to one core,
and reads the figures back from ``OUT.json``. Kinds:

- ``serving``: ``lambda_func.lambda_handler`` on HTTP API events (MODEL_DIR chooses the model), and
  the two parts nothing can avoid, decode + resize (``load_image``) and the model's ``predict``;
- ``keras``: the usual way, a TensorFlow process calling ``model.predict`` per request;
- ``peak``: the core's float32 peak, as one-thread numpy matmuls reach it;
- ``convert``: ``convert.py`` for every quantisation it offers (not timed, not pinned).

Only the ``keras`` and ``convert`` kinds import TensorFlow, and only inside their functions.
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

from benchmarks.inputs import predict_event, summarize
from imgclf import artifact
from imgclf.preprocess import load_image
from imgclf.runtime import find_runtime

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
    loaded = artifact.load(artifact.read_dir(settings.model_dir), settings.num_threads)
    model, limits = loaded.interpreter, settings.image_limits

    def handle(event: dict[str, Any]) -> None:
        response = lambda_func.lambda_handler(event, None)
        if response["statusCode"] != 200:
            raise RuntimeError(f"handler answered {response}")

    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    for item in spec["inputs"]:
        data = Path(item["path"]).read_bytes()
        event = predict_event(data, item["media_type"])
        pixels = load_image(data, model.height, model.width, limits)
        calls[item["name"], "handler"] = lambda event=event: handle(event)
        calls[item["name"], "decode"] = lambda data=data: load_image(
            data, model.height, model.width, limits
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
    content = (settings.model_dir / artifact.MODEL).read_bytes()
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
        spec: ``{"model_path", "inputs": [{"name", "path"}], "iterations"}``.

    Returns:
        Per input the three summaries, the TensorFlow version and the process's peak RSS.
    """
    import tensorflow as tf  # noqa: PLC0415 - the only kinds that need TensorFlow import it

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras  # noqa: PLC0415

    model = keras.models.load_model(spec["model_path"])
    height, width = model.input_shape[1:3]

    def tutorial(data: bytes) -> None:
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height))
        x = np.expand_dims(np.array(img, dtype=np.float32), 0)
        model.predict(x, verbose=0)

    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    for item in spec["inputs"]:
        data = Path(item["path"]).read_bytes()
        x = load_image(data, height, width)[np.newaxis].astype(np.float32)
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


PROBES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "serving": serving,
    "keras": keras,
    "peak": peak,
    "convert": convert,
}


def main(argv: list[str]) -> int:
    """``KIND SPEC.json OUT.json``: runs one probe and writes its result."""
    kind, spec_path, out_path = argv
    result = PROBES[kind](json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
