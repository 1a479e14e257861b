"""The top-5 of the pretrained classifier on real photos: Keras, int8 TFLite and the bundled model.

The photos ship with matplotlib and scikit-image (and docs/examples/). int8 is converted here as
``make pretrained`` converts it (same calibration photos); the bundled ``model/imagenet`` is what
serving answers with (float16: int8 failed the gate). Needs the training set (``make setup``).

    .venv/bin/python scripts/top5_photos.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgclf import artifact  # noqa: E402
from imgclf.pipeline import conversion, pretrained  # noqa: E402
from imgclf.pipeline.imagenet import imagenet_classes  # noqa: E402
from imgclf.pipeline.pretrained import Photo  # noqa: E402
from imgclf.preprocess import load_image  # noqa: E402
from imgclf.runtime import TFLiteModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = {
    "grace_hopper (matplotlib)": Photo("matplotlib", "mpl-data/sample_data/grace_hopper.jpg").read,
    "chelsea (scikit-image)": Photo("skimage", "data/chelsea.png").read,
    "coffee (scikit-image)": Photo("skimage", "data/coffee.png").read,
    "docs/examples/cat.jpg": (ROOT / "docs/examples/cat.jpg").read_bytes,
    "docs/examples/coffee.jpg": (ROOT / "docs/examples/coffee.jpg").read_bytes,
}


def main() -> int:
    labels = imagenet_classes()
    keras_model = pretrained.keras_classifier(pretrained.DEFAULT_CACHE)
    size = keras_model.input_shape[1]
    calibration = pretrained.photo_pixels(
        pretrained.CALIBRATION_PHOTOS,
        pretrained.CALIBRATION_VARIANTS,
        pretrained.SEED + 1,
        size,
    )
    int8 = TFLiteModel(conversion.to_tflite(keras_model, "int8", calibration))
    bundled = artifact.load(artifact.read_dir(ROOT / "model" / "imagenet"), name="imagenet")

    def top5(probs: np.ndarray) -> str:
        return ", ".join(f"{labels[i]} {probs[i]:.2f}" for i in np.argsort(-probs)[:5])

    for name, read in PHOTOS.items():
        pixels = load_image(read(), size, size, framing=pretrained.FRAMING)
        keras_probs = keras_model.predict(pixels[None].astype(np.float32), verbose=0)[0]
        print(name)
        print(f"  keras          {top5(keras_probs)}")
        print(f"  int8 tflite    {top5(int8.predict(pixels))}")
        print(f"  bundled ({bundled.manifest.quantization}) {top5(bundled.predict(pixels))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
