"""The TFLite model as serving (and convert.py's parity check) runs it, with no TensorFlow needed.

The interpreter comes from LiteRT (``ai_edge_litert``), falling back to ``tflite_runtime`` and then
to ``tensorflow.lite``. The input spec (size, float or quantised integers) is read from the model
itself, so any model ``convert.py`` writes is served without code changes.

Models are converted with a batch dimension of 1. ``TFLiteModel.predict_batch`` classifies several
images either one invoke per image or, for the batch sizes in ``BATCH_INVOKE_SIZES``, in one invoke
of a second interpreter whose input is resized to the batch (``resize_tensor_input``), kept per
batch size.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np

# (module holding Interpreter, distribution that provides it), in order of preference.
_RUNTIMES: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


@dataclass(frozen=True)
class Runtime:
    """The interpreter class in use, with the name and version of the package providing it."""

    name: str
    version: str
    interpreter_class: Any


def find_runtime() -> Runtime:
    """Returns the first available TFLite runtime (LiteRT, tflite-runtime, tensorflow.lite)."""
    for module_name, dist in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return Runtime(name=dist, version=version, interpreter_class=module.Interpreter)
    raise ImportError("no TFLite runtime found: pip install ai-edge-litert")


# A quantised input that takes uint8 pixels unchanged (what convert.py's int8 models have).
_RAW_PIXELS = ("uint8", 1.0, 0)

# The batch sizes that ``predict_batch`` answers with one invoke over a batch dimension; every other
# size loops over the images, one invoke each. The rule, from ``make bench`` (docs/benchmarks.md,
# "Batches"): a size goes in only when one batched invoke was measured at least
# ``BATCH_INVOKE_MIN_SPEEDUP`` times faster than the loop for every bundled model. On one thread a
# batch dimension gives the kernels no parallelism they lack at batch 1, and the measured ratios
# stayed within noise (0.96-1.07x for batches of 4 and 8, both models), while each batch size costs
# a second interpreter: 25-160 ms to build on first use and 12-76 MB of arena (76 MB: imagenet,
# batch 8). So none is listed, and a batch request costs the sum of its images' invokes.
BATCH_INVOKE_SIZES: frozenset[int] = frozenset()
BATCH_INVOKE_MIN_SPEEDUP = 1.10


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and (for quantised tensors) the affine quantisation of one tensor."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> TensorSpec:
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]).name,
            scale=float(scale),
            zero_point=int(zero_point),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


def _dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A tensor's values as float32 (dequantised when the tensor is quantised)."""
    if spec.dtype in ("int8", "uint8"):
        return (y.astype(np.float32) - spec.zero_point) * spec.scale
    return y.astype(np.float32)


def _outputs(interpreter: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The probabilities output and, for a two-output model, the penultimate features output.

    ``imgclf.pipeline.conversion`` exports the probabilities first and the features second, so
    the signature names them ``output_0`` and ``output_1``; models without a signature fall back
    to the tensor names' output numbers (``...:0``, ``...:1``). Old models have one output.

    Raises:
        ValueError: no output, more than two, or two that cannot be told apart.
    """
    details = interpreter.get_output_details()
    if len(details) == 1:
        return details[0], None
    if len(details) != 2:
        raise ValueError("expected a model with one output (or two: probabilities, features)")
    by_index = {d["index"]: d for d in details}
    try:
        runner = interpreter.get_signature_runner()
        names = runner.get_output_details()
        ordered = [by_index[names[n]["index"]] for n in ("output_0", "output_1")]
    except (ValueError, KeyError, RuntimeError, AttributeError):
        ordered = sorted(details, key=lambda d: str(d["name"]).rsplit(":", 1)[-1])
    probs, features = ordered
    if len(probs["shape"]) != 2 or len(features["shape"]) != 2:
        raise ValueError("expected two outputs of shape (1, n): probabilities and features")
    return probs, features


class TFLiteModel:
    """One loaded TFLite classifier: RGB uint8 pixels in, class probabilities out.

    Not thread-safe: one instance serves one request at a time, as a Lambda environment does.
    """

    def __init__(
        self,
        model_content: bytes,
        num_threads: int = 1,
        batch_invoke_sizes: frozenset[int] = BATCH_INVOKE_SIZES,
    ) -> None:
        """Loads the model and allocates its tensors.

        Args:
            model_content: the ``.tflite`` flatbuffer.
            num_threads: interpreter threads (one per Lambda environment was measured best).
            batch_invoke_sizes: the batch sizes ``predict_batch`` runs as one invoke.

        Raises:
            ValueError: the bytes are not a loadable TFLite classifier.
        """
        self.runtime = find_runtime()
        self.batch_invoke_sizes = frozenset(batch_invoke_sizes)
        self._content = model_content
        self._num_threads = num_threads
        # Batch size -> an interpreter whose input was resized to it (built on first use).
        self._batch_interpreters: dict[int, Any] = {}
        try:
            self._interpreter = self.runtime.interpreter_class(
                model_content=model_content, num_threads=num_threads
            )
            self._interpreter.allocate_tensors()
        except Exception as exc:  # the runtimes raise ValueError or RuntimeError
            raise ValueError(f"not a loadable TFLite model: {exc}") from exc
        input_details = self._interpreter.get_input_details()
        if len(input_details) != 1:
            raise ValueError("expected a model with one input")
        outputs, features = _outputs(self._interpreter)
        self.input = TensorSpec.from_details(input_details[0])
        self.output = TensorSpec.from_details(outputs)
        # The penultimate features (the final Dense layer's input), when the model exports them.
        self.features = None if features is None else TensorSpec.from_details(features)
        if len(self.input.shape) != 4 or self.input.shape[0] != 1 or self.input.shape[3] != 3:
            raise ValueError(f"expected an input of shape (1, H, W, 3), got {self.input.shape}")
        self._input_index = input_details[0]["index"]
        self._output_index = outputs["index"]
        self._features_index = None if features is None else features["index"]

    @property
    def height(self) -> int:
        return self.input.shape[1]

    @property
    def width(self) -> int:
        return self.input.shape[2]

    @property
    def num_classes(self) -> int:
        return self.output.shape[-1]

    def _input_array(self, x: np.ndarray) -> np.ndarray:
        """``(N, height, width, 3)`` uint8 pixels as the input tensor takes them.

        uint8 pixels go into convert.py's int8 models unchanged (scale 1, zero point 0); other
        quantised inputs are quantised, float inputs converted.
        """
        spec = self.input
        quantized = spec.dtype in ("int8", "uint8")
        if quantized and (spec.dtype, spec.scale, spec.zero_point) != _RAW_PIXELS:
            info = np.iinfo(spec.dtype)
            q = np.round(x.astype(np.float32) / spec.scale) + spec.zero_point
            return np.clip(q, info.min, info.max).astype(spec.dtype)
        if x.dtype != spec.dtype:
            return x.astype(spec.dtype)
        return x

    def _probabilities(self, y: np.ndarray) -> np.ndarray:
        """The output tensor's values as float32 probabilities (dequantised when quantised)."""
        return _dequantize(y, self.output)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Classifies one image.

        Args:
            pixels: ``(height, width, 3)`` uint8 RGB, as ``imgclf.preprocess.load_image`` returns.

        Returns:
            float32 class probabilities, shape ``(num_classes,)``.
        """
        return self.classify(pixels)[0]

    def classify(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Classifies one image and returns its penultimate features too, when the model has them.

        Args:
            pixels: ``(height, width, 3)`` uint8 RGB.

        Returns:
            float32 probabilities ``(num_classes,)`` and float32 features ``(feature_dim,)``, or
            None for a model with one output (converted before features were exported).
        """
        self._interpreter.set_tensor(self._input_index, self._input_array(pixels[np.newaxis]))
        self._interpreter.invoke()
        probs = self._probabilities(self._interpreter.get_tensor(self._output_index)[0])
        if self._features_index is None or self.features is None:
            return probs, None
        raw = self._interpreter.get_tensor(self._features_index)[0]
        return probs, _dequantize(raw, self.features)

    def predict_batch(self, pixels: np.ndarray, batch_invoke: bool | None = None) -> np.ndarray:
        """Classifies several images: one invoke per image, or one invoke over a batch dimension.

        Args:
            pixels: ``(N, height, width, 3)`` uint8 RGB.
            batch_invoke: True for one invoke over the batch, False for one invoke per image;
                None (serving) follows ``batch_invoke_sizes``.

        Returns:
            float32 class probabilities, shape ``(N, num_classes)``; the same as ``predict`` on
            each image.
        """
        return self.classify_batch(pixels, batch_invoke)[0]

    def classify_batch(
        self, pixels: np.ndarray, batch_invoke: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``classify`` for several images, one invoke per image or one over the batch.

        Args:
            pixels: ``(N, height, width, 3)`` uint8 RGB.
            batch_invoke: as ``predict_batch``.

        Returns:
            float32 probabilities ``(N, num_classes)`` and features ``(N, feature_dim)``, or None
            for a model without a features output.
        """
        n = len(pixels)
        if batch_invoke is None:
            batch_invoke = n in self.batch_invoke_sizes
        features_dim = None if self.features is None else self.features.shape[-1]
        if n == 0:
            empty = None if features_dim is None else np.empty((0, features_dim), np.float32)
            return np.empty((0, self.num_classes), dtype=np.float32), empty
        if n == 1 or not batch_invoke:
            answers = [self.classify(image) for image in pixels]
            probs = np.stack([a[0] for a in answers])
            if features_dim is None:
                return probs, None
            return probs, np.stack([a[1] for a in answers])
        interpreter = self._batch_interpreter(n)
        interpreter.set_tensor(self._input_index, self._input_array(pixels))
        interpreter.invoke()
        probs = self._probabilities(interpreter.get_tensor(self._output_index))
        if self._features_index is None or self.features is None:
            return probs, None
        return probs, _dequantize(interpreter.get_tensor(self._features_index), self.features)

    def _batch_interpreter(self, n: int) -> Any:
        """The interpreter for batches of ``n`` images, built on first use and kept.

        Raises:
            ValueError: the model does not run with a batch dimension of ``n`` (an op with the
                batch of 1 written into it).
        """
        interpreter = self._batch_interpreters.get(n)
        if interpreter is not None:
            return interpreter
        interpreter = self.runtime.interpreter_class(
            model_content=self._content, num_threads=self._num_threads
        )
        interpreter.resize_tensor_input(
            self._input_index, [n, self.height, self.width, 3], strict=False
        )
        interpreter.allocate_tensors()
        details = next(
            d for d in interpreter.get_output_details() if d["index"] == self._output_index
        )
        if tuple(int(d) for d in details["shape"]) != (n, self.num_classes):
            raise ValueError(f"this model does not take a batch of {n}: output {details['shape']}")
        self._batch_interpreters[n] = interpreter
        return interpreter
