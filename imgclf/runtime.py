"""The TFLite model as serving (and convert.py's parity check) runs it, with no TensorFlow needed.

The interpreter comes from LiteRT (``ai_edge_litert``), falling back to ``tflite_runtime`` and then
to ``tensorflow.lite``. The input spec (size, float or quantised integers) is read from the model
itself, so any model ``convert.py`` writes is served without code changes.
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


class TFLiteModel:
    """One loaded TFLite classifier: RGB uint8 pixels in, class probabilities out.

    Not thread-safe: one instance serves one request at a time, as a Lambda environment does.
    """

    def __init__(self, model_content: bytes, num_threads: int = 1) -> None:
        """Loads the model and allocates its tensors.

        Args:
            model_content: the ``.tflite`` flatbuffer.
            num_threads: interpreter threads (one per Lambda environment was measured best).

        Raises:
            ValueError: the bytes are not a loadable TFLite classifier.
        """
        self.runtime = find_runtime()
        try:
            self._interpreter = self.runtime.interpreter_class(
                model_content=model_content, num_threads=num_threads
            )
            self._interpreter.allocate_tensors()
        except Exception as exc:  # the runtimes raise ValueError or RuntimeError
            raise ValueError(f"not a loadable TFLite model: {exc}") from exc
        input_details = self._interpreter.get_input_details()
        output_details = self._interpreter.get_output_details()
        if len(input_details) != 1 or len(output_details) != 1:
            raise ValueError("expected a model with one input and one output")
        self.input = TensorSpec.from_details(input_details[0])
        self.output = TensorSpec.from_details(output_details[0])
        if len(self.input.shape) != 4 or self.input.shape[0] != 1 or self.input.shape[3] != 3:
            raise ValueError(f"expected an input of shape (1, H, W, 3), got {self.input.shape}")
        self._input_index = input_details[0]["index"]
        self._output_index = output_details[0]["index"]

    @property
    def height(self) -> int:
        return self.input.shape[1]

    @property
    def width(self) -> int:
        return self.input.shape[2]

    @property
    def num_classes(self) -> int:
        return self.output.shape[-1]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Classifies one image.

        Args:
            pixels: ``(height, width, 3)`` uint8 RGB, as ``imgclf.preprocess.load_image`` returns.

        Returns:
            float32 class probabilities, shape ``(num_classes,)``.
        """
        x = pixels[np.newaxis]
        spec = self.input
        quantized = spec.dtype in ("int8", "uint8")
        if quantized and (spec.dtype, spec.scale, spec.zero_point) != _RAW_PIXELS:
            info = np.iinfo(spec.dtype)
            q = np.round(x.astype(np.float32) / spec.scale) + spec.zero_point
            x = np.clip(q, info.min, info.max).astype(spec.dtype)
        elif x.dtype != spec.dtype:
            x = x.astype(spec.dtype)
        self._interpreter.set_tensor(self._input_index, x)
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output_index)[0]
        if self.output.dtype in ("int8", "uint8"):
            return (y.astype(np.float32) - self.output.zero_point) * self.output.scale
        return y.astype(np.float32)
