"""One bundled model's Keras source, converted to every engine the benchmark compares.

``prepare`` runs in one unpinned TensorFlow process per bundled model (probe kind ``prepare``):

- the Keras model: ``model/<name>/model.keras``, or for the pretrained ``imagenet`` model the one
  ``python -m imgclf.pipeline.pretrained`` builds into its cache under ``runs/`` (no Keras file is
  bundled for it);
- the images the converter uses: the int8 calibration images and the images the parity gate scores
  (a model with ``model.keras``: 200 seeded training images and the test split of the dataset it
  was trained on, ``config.data`` of its ``metrics.json`` (``benchmarks.datasets``), as
  ``convert.py`` picks them; imagenet: the photos ``imgclf.pipeline.pretrained`` calibrates and
  gates on);
- TFLite: every quantisation, through the project's own entry points (``convert.py``, or
  ``imgclf.pipeline.pretrained.build``) with ``--force``, so that a quantisation the parity gate
  refuses is still measured, into a model folder serving can load;
- ONNX: the same Keras model through tf2onnx (float32, opset 17), and ONNX Runtime's static int8
  (QDQ) calibrated on the very calibration images the TFLite int8 model saw; top-1 agreement of
  both with Keras on the gate's images, as the TFLite models are scored.

tf2onnx, onnx and onnxruntime come from requirements-bench.txt (never the serving set); they are
imported inside the functions, so the rest of ``benchmarks`` does not need them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import artifact

# ONNX variants: float32 as tf2onnx writes it, and static int8 in QDQ form.
ONNX_VARIANTS = ("float32", "int8")
ONNX_OPSET = 17
# convert.py's --representative default: the training images that calibrate int8.
REPRESENTATIVE = 200
CALIBRATION_SEED = 0
# What each variant is, for the report.
ONNX_METHOD = {
    "float32": f"tf2onnx from_function, opset {ONNX_OPSET}, NHWC float32 input",
    "int8": "onnxruntime.quantization.quantize_static after quant_pre_process: QDQ, uint8 "
    "activations (asymmetric, MinMax), int8 weights per channel with reduce_range (the setting "
    "ORT documents against the saturation of its u8s8 AVX2 / AVX-512 kernels without VNNI)",
}


@dataclass(frozen=True)
class Source:
    """A Keras model with the images its conversion uses."""

    keras: Any
    keras_path: Path
    calibration: np.ndarray  # uint8 (N, H, W, 3)
    gate_x: np.ndarray  # uint8 (M, H, W, 3)
    gate_y: np.ndarray | None
    description: str


def _scene_source(model_dir: Path, data: Path, representative: int) -> Source:
    """The Keras model of a model folder and the images ``convert.py`` uses for it."""
    import keras  # noqa: PLC0415 - TensorFlow only in this process

    from imgclf.pipeline import conversion  # noqa: PLC0415
    from imgclf.pipeline.data import find_splits, load_split  # noqa: PLC0415

    path = model_dir / artifact.KERAS
    model = keras.models.load_model(path)
    classes = json.loads((model_dir / artifact.LABELS).read_text())
    height, width = model.input_shape[1:3]
    framing = conversion.model_framing(json.loads((model_dir / artifact.METRICS).read_text()))
    train_dir, test_dir = find_splits(data)
    test = load_split(test_dir, height, width, classes=classes, framing=framing)
    train = load_split(train_dir, height, width, classes=classes, framing=framing)
    # convert.py's choice of calibration images, spelled the same way (seed 0, --representative).
    rng = np.random.default_rng(CALIBRATION_SEED)
    pick = rng.choice(len(train.x), size=min(representative, len(train.x)), replace=False)
    return Source(
        keras=model,
        keras_path=path,
        calibration=train.x[pick],
        gate_x=test.x,
        gate_y=test.y,
        description=f"{len(pick)} seeded training images of {data.name} (calibration), "
        f"its {len(test.y)} test images (parity, labelled)",
    )


def _pretrained_source() -> Source:
    """The pretrained classifier (cached) and the photos its build gates and calibrates on."""
    from imgclf.pipeline import pretrained  # noqa: PLC0415 - TensorFlow only in this process

    model = pretrained.keras_classifier(pretrained.DEFAULT_CACHE)
    size = model.input_shape[1]
    gate_x = pretrained.photo_pixels(
        pretrained.GATE_PHOTOS, pretrained.GATE_VARIANTS, pretrained.SEED, size
    )
    calibration = pretrained.photo_pixels(
        pretrained.CALIBRATION_PHOTOS, pretrained.CALIBRATION_VARIANTS, pretrained.SEED + 1, size
    )
    return Source(
        keras=model,
        keras_path=pretrained.DEFAULT_CACHE / artifact.KERAS,
        calibration=calibration,
        gate_x=gate_x,
        gate_y=None,
        description=f"{len(calibration)} calibration photos and {len(gate_x)} gate photos of "
        "imgclf.pipeline.pretrained (parity against the float Keras model, unlabelled)",
    )


def _write_tflite(spec: dict[str, Any], quantization: str, out: Path, representative: int) -> None:
    """Converts, gates (``--force``) and writes one quantisation as a servable model folder.

    Through the same entry points as the project: ``convert.py`` for a model folder with its
    ``model.keras``, ``imgclf.pipeline.pretrained.build`` for the pretrained classifier.

    Raises:
        RuntimeError: the conversion failed.
    """
    model_dir = Path(spec["model_dir"])
    if (model_dir / artifact.KERAS).is_file():
        from imgclf.pipeline import conversion  # noqa: PLC0415

        args = ["--model-dir", str(model_dir), "--data", spec["data"], "--out", str(out)]
        args += ["--quantization", quantization, "--force", "--name", spec["name"]]
        code = conversion.main([*args, "--representative", str(representative)])
    else:
        from imgclf.pipeline import pretrained  # noqa: PLC0415

        code = pretrained.build(out, pretrained.DEFAULT_CACHE, quantization, force=True)
    if code != 0:
        raise RuntimeError(f"converting {spec['name']} to {quantization} failed ({code})")


def to_onnx(model: Any, out: Path) -> Path:
    """The Keras model as ONNX (float32, batch 1, NHWC float pixels in), via tf2onnx."""
    import onnx  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    import tf2onnx  # noqa: PLC0415

    height, width = model.input_shape[1:3]
    function = tf.function(lambda x: model(x, training=False))
    signature = [tf.TensorSpec((1, height, width, 3), tf.float32, name="pixels")]
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=ONNX_OPSET)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, out)
    return out


def quantize_onnx(float_model: Path, calibration: np.ndarray, out: Path) -> Path:
    """ONNX Runtime's static int8 (QDQ) model, calibrated on ``calibration`` (uint8 pixels)."""
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._images: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._images, None)
            return None if image is None else {"pixels": image[np.newaxis].astype(np.float32)}

    prepared = out.with_name(out.stem + "-prepared.onnx")
    quant_pre_process(str(float_model), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
    )
    prepared.unlink()
    return out


def onnx_session(path: Path) -> Any:
    """An ONNX Runtime CPU session with one thread, as the benchmark times it."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_parity(
    keras_probs: np.ndarray, path: Path, x: np.ndarray, y: np.ndarray | None, quantization: str
) -> dict[str, Any]:
    """An ONNX model against Keras on the gate's images, held to the TFLite models' parity gate.

    Args:
        keras_probs: the Keras model's probabilities on ``x``.
        path: the ONNX model.
        x: uint8 images.
        y: their labels, or None.
        quantization: ``float32`` or ``int8`` (int8 is held to the gate's int8 limits).

    Returns:
        The figures (agreement, top-1 in top-5, accuracies with labels), whether the gate would
        let the model through, and its checks.
    """
    from imgclf.pipeline.conversion import Gate, ParityReport  # noqa: PLC0415

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    probs = np.concatenate(
        [session.run(None, {name: image[np.newaxis].astype(np.float32)})[0] for image in x]
    )
    keras_top = keras_probs.argmax(axis=1)
    rank = np.argsort(-probs, axis=1, kind="stable")
    report = ParityReport(
        images=len(x),
        agreement=float(np.mean(rank[:, 0] == keras_top)),
        top1_in_top5=float(np.mean((rank[:, :5] == keras_top[:, np.newaxis]).any(axis=1))),
        keras_accuracy=None if y is None else float(np.mean(keras_top == y)),
        tflite_accuracy=None if y is None else float(np.mean(rank[:, 0] == y)),
        max_abs_prob_diff=float(np.abs(probs - keras_probs).max()),
        invoke_ms_p50=0.0,
        size_bytes=path.stat().st_size,
    )
    checks = Gate().checks(report, quantization)
    return {
        **report.figures(timing=False),
        "accuracy": report.tflite_accuracy,
        "gate_passed": all(check.passed for check in checks),
        "gate_checks": [str(check) for check in checks],
    }


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Converts one bundled model's Keras source to every TFLite quantisation and ONNX variant.

    Args:
        spec: ``{"name", "model_dir", "data", "out", "quantizations", "max_images"}``
            (``data``: the dataset the model was trained on, ``benchmarks.datasets.model_dataset``,
            None for the pretrained model; ``max_images``: use at most that many calibration and
            parity images, None for all: the tiny budget's shortcut).

    Returns:
        ``{"keras_path", "source", "tflite": {quantisation: folder}, "onnx": {variant: {"path",
        "bytes", "method", parity figures}}}``, or ``{"skipped": why}`` when the model has no
        Keras source.
    """
    name, model_dir, out = spec["name"], Path(spec["model_dir"]), Path(spec["out"])
    limit = spec.get("max_images")
    representative = min(REPRESENTATIVE, limit or REPRESENTATIVE)
    if (model_dir / artifact.KERAS).is_file():
        if not spec["data"]:
            return {"skipped": f"model/{name}'s metrics.json records no dataset (config.data)"}
        source = _scene_source(model_dir, Path(spec["data"]), representative)
    else:
        from imgclf.pipeline import pretrained  # noqa: PLC0415

        if name != pretrained.NAME:
            return {"skipped": f"model/{name} has no model.keras and no recipe that rebuilds one"}
        source = _pretrained_source()
    if limit and not (model_dir / artifact.KERAS).is_file():
        # The pretrained build gates on all its photos; only ONNX's calibration and parity shrink.
        source = Source(
            keras=source.keras,
            keras_path=source.keras_path,
            calibration=source.calibration[:limit],
            gate_x=source.gate_x[:limit],
            gate_y=None if source.gate_y is None else source.gate_y[:limit],
            description=f"{source.description}; the first {limit} of each only (budget)",
        )
    tflite = {}
    for quantization in spec["quantizations"]:
        folder = out / "tflite" / quantization
        _write_tflite(spec, quantization, folder, representative)
        tflite[quantization] = str(folder)
    float_path = to_onnx(source.keras, out / "onnx" / "float32.onnx")
    paths = {
        "float32": float_path,
        "int8": quantize_onnx(float_path, source.calibration, out / "onnx" / "int8.onnx"),
    }
    keras_probs = source.keras.predict(source.gate_x.astype(np.float32), batch_size=32, verbose=0)
    onnx = {
        variant: {
            "path": str(path),
            "bytes": path.stat().st_size,
            "method": ONNX_METHOD[variant],
            **onnx_parity(keras_probs, path, source.gate_x, source.gate_y, variant),
        }
        for variant, path in paths.items()
    }
    return {
        "keras_path": str(source.keras_path),
        "keras_bytes": source.keras_path.stat().st_size,
        "source": source.description,
        "calibration_images": len(source.calibration),
        "tflite": tflite,
        "onnx": onnx,
    }
