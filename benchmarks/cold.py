"""A cold start: ``python -m benchmarks.cold handler|keras|retrain INPUT OUT.json``, a new process.

``handler`` imports ``lambda_func`` (imports, model load and its warm-up inference) and answers one
HTTP API event (a JSON file) the way Lambda would. ``keras`` does what the usual TensorFlow server
does at start and on its first request: import TensorFlow, ``keras.models.load_model``, then decode
the image (a file) with PIL and call ``model.predict``. ``retrain`` imports ``retrain_handler``, the
retrain function's module (INPUT is ignored), and records whether the training stack came with it.
Only the standard library is imported
before the clock starts; the parent adds interpreter start-up by comparing wall-clock times.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def handler(event_path: Path) -> dict[str, Any]:
    """Imports the handler and answers one event; returns the phases in milliseconds."""
    event = json.loads(event_path.read_text())
    t0 = time.perf_counter()
    import lambda_func  # the cold start being measured

    t1 = time.perf_counter()
    response = lambda_func.lambda_handler(event, None)
    t2 = time.perf_counter()
    if response["statusCode"] != 200:
        raise RuntimeError(f"handler answered {response}")
    return {"init_ms": (t1 - t0) * 1000, "first_answer_ms": (t2 - t1) * 1000}


def keras(image_path: Path, model_path: Path) -> dict[str, Any]:
    """Starts the usual TensorFlow server and answers one image; returns the phases in ms."""
    data = image_path.read_bytes()
    t0 = time.perf_counter()
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = keras.models.load_model(model_path)
    height, width = model.input_shape[1:3]
    t1 = time.perf_counter()
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height))
    probs = model.predict(np.expand_dims(np.array(img, dtype=np.float32), 0), verbose=0)
    t2 = time.perf_counter()
    if probs.shape[0] != 1:
        raise RuntimeError(f"unexpected prediction shape {probs.shape}")
    return {"init_ms": (t1 - t0) * 1000, "first_answer_ms": (t2 - t1) * 1000}


# Modules of the training stack that the retrain function's cold start must not import.
TRAINING_STACK = ("tensorflow", "keras", "keras_tuner", "sklearn", "matplotlib")


def retrain() -> dict[str, Any]:
    """Imports the retrain function's module; returns the time and the training modules loaded."""
    t0 = time.perf_counter()
    import retrain_handler  # noqa: F401 - the cold start being measured

    t1 = time.perf_counter()
    return {
        "init_ms": (t1 - t0) * 1000,
        "first_answer_ms": 0.0,
        "training_stack_imported": [m for m in TRAINING_STACK if m in sys.modules],
    }


def main(argv: list[str]) -> int:
    """``handler EVENT OUT``, ``keras IMAGE OUT MODEL.keras`` or ``retrain - OUT``."""
    kind, input_path, out_path, *rest = argv
    if kind == "handler":
        figures = handler(Path(input_path))
    elif kind == "retrain":
        figures = retrain()
    else:
        figures = keras(Path(input_path), Path(rest[0]))
    # Wall-clock time (not perf_counter): the parent compares it with the time it spawned us.
    figures["answered_at"] = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["peak_rss_mb"] = usage.ru_maxrss * 1024 / 1e6
    # CPU time to the first answer (interpreter start included): unlike the wall time, it does not
    # grow when other processes share the core.
    figures["cpu_ms"] = (usage.ru_utime + usage.ru_stime) * 1000
    Path(out_path).write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
