"""Out-of-distribution statistics: how far an input is from what a model was trained on.

Every answer of a model with ``ood.npz`` carries ``"ood": {"score", "unusual"}`` (README, "Serving
API"). The score comes from the penultimate features (the input of the final softmax Dense layer),
which ``imgclf.pipeline.conversion`` exports as the TFLite model's second output:

1. ``fit``: the features of the training images, run through the converted TFLite model itself,
   are projected on their first ``DIMS`` principal components; each class gets its mean there,
   all classes share one covariance (Mahalanobis, Lee et al. 2018). Without labels (the pretrained
   ImageNet model, whose reference photos have none) the images are one class.
2. Calibration: the smallest class distance of every held-out in-distribution image (the test
   split; the gate photos for the ImageNet model), sorted. An input's score is the share of those
   images that were no further (an empirical CDF), and it is ``unusual`` above
   ``artifact.OOD_THRESHOLD`` (0.99).

Conversion computes the statistics itself whenever it has data; this command adds them to a model
folder converted before they existed, by converting its ``model.keras`` again with the same
quantisation (``model.tflite`` gains the features output; ``manifest.json`` and ``ood.npz`` are
rewritten)::

    python -m imgclf.pipeline.ood --model-dir model/scene --data data/sample
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import artifact
from imgclf.artifact import OodStats
from imgclf.pipeline import ExitCode
from imgclf.runtime import TFLiteModel

# Principal components kept (the scene model's features have 64 dimensions: all of them).
DIMS = 64
# Added to the shared covariance's diagonal, relative to its mean variance (keeps it invertible
# when there are fewer images than dimensions).
SHRINKAGE = 1e-3
METHOD = (
    "class-conditional Gaussians with a shared covariance (Mahalanobis, Lee et al. 2018) on the "
    "penultimate features, PCA-reduced; score = empirical CDF of the smallest class distance "
    "over held-out in-distribution images"
)


def tflite_features(content: bytes, x: np.ndarray) -> np.ndarray:
    """The penultimate features of images, as the served TFLite model computes them.

    Args:
        content: a two-output ``model.tflite`` (probabilities, features).
        x: uint8 images ``(N, H, W, 3)``.

    Returns:
        float32 ``(N, feature_dim)``.

    Raises:
        ValueError: the model has no features output.
    """
    model = TFLiteModel(content)
    if model.features is None:
        raise ValueError("the model has no features output (converted before they were exported)")
    rows = []
    for image in x:
        features = model.classify(image)[1]
        assert features is not None
        rows.append(features)
    return np.stack(rows).astype(np.float32)


def fit(
    features: np.ndarray,
    labels: np.ndarray | None,
    calibration: np.ndarray,
    dims: int = DIMS,
    shrinkage: float = SHRINKAGE,
) -> OodStats:
    """Fits the statistics on training features and calibrates them on held-out ones.

    Args:
        features: ``(N, feature_dim)`` of the training images.
        labels: their class indices, or None (one class).
        calibration: ``(M, feature_dim)`` of held-out in-distribution images.
        dims: principal components kept (at most the feature and image counts).
        shrinkage: added to the covariance's diagonal, relative to its mean variance.

    Returns:
        The statistics.
    """
    x = np.asarray(features, np.float64)
    y = np.zeros(len(x), int) if labels is None else np.asarray(labels, int)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(dims, vt.shape[0])
    components = vt[:k].T
    z = (x - mean) @ components
    classes = np.unique(y)
    class_means = np.stack([z[y == c].mean(axis=0) for c in classes])
    residuals = z - class_means[np.searchsorted(classes, y)]
    covariance = residuals.T @ residuals / len(z)
    covariance += shrinkage * np.trace(covariance) / k * np.eye(k)
    whitening = np.linalg.cholesky(np.linalg.inv(covariance))
    stats = OodStats(
        mean=mean.astype(np.float32),
        components=components.astype(np.float32),
        class_means=class_means.astype(np.float32),
        whitening=whitening.astype(np.float32),
        calibration=np.zeros(1, np.float32),
    )
    distances = np.sort(stats.distances(calibration)).astype(np.float32)
    # Stored as float32: re-read so that the arrays served are the ones written.
    return OodStats.from_bytes(dataclasses.replace(stats, calibration=distances).to_bytes())


def record(
    stats: OodStats, *, fitted_on: str, calibrated_on: str, shrinkage: float = SHRINKAGE
) -> dict[str, Any]:
    """The manifest's ``ood``: the file's sha256 and size, and how it was made.

    Args:
        stats: the statistics as written.
        fitted_on: which images fitted them (a phrase with a count).
        calibrated_on: which held-out images calibrated them.
        shrinkage: the covariance shrinkage they were fitted with.
    """
    content = stats.to_bytes()
    return {
        "file": artifact.OOD,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
        "method": METHOD,
        "feature_dim": stats.feature_dim,
        "dims": int(stats.components.shape[1]),
        "shrinkage": shrinkage,
        "classes": int(stats.class_means.shape[0]),
        "fitted_on": fitted_on,
        "calibrated_on": calibrated_on,
        "calibration_images": len(stats.calibration),
        "threshold": artifact.OOD_THRESHOLD,
    }


def fit_from_model(
    content: bytes,
    train_x: np.ndarray,
    train_y: np.ndarray | None,
    held_out_x: np.ndarray,
    *,
    fitted_on: str,
    calibrated_on: str,
    dims: int = DIMS,
    shrinkage: float = SHRINKAGE,
) -> tuple[OodStats, dict[str, Any]]:
    """Runs the converted model on both sets of images and fits the statistics (``fit``).

    Returns:
        The statistics and their manifest record.
    """
    features = tflite_features(content, train_x)
    stats = fit(features, train_y, tflite_features(content, held_out_x), dims, shrinkage)
    return stats, record(
        stats, fitted_on=fitted_on, calibrated_on=calibrated_on, shrinkage=shrinkage
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.pipeline.ood``: reconverts a model folder with OOD statistics."""
    parser = argparse.ArgumentParser(
        prog="python -m imgclf.pipeline.ood",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="holds model.keras etc.")
    parser.add_argument("--data", type=Path, required=True, help="its dataset (train/test splits)")
    args = parser.parse_args(argv)
    if not (args.model_dir / artifact.KERAS).is_file():
        print(f"error: {args.model_dir / artifact.KERAS} is missing", file=sys.stderr)
        return ExitCode.FAILED
    manifest = artifact.Manifest.from_json((args.model_dir / artifact.MANIFEST).read_bytes())
    from imgclf.pipeline import conversion  # the training stack; not needed by the fitting above

    code = conversion.main(
        [
            "--model-dir",
            str(args.model_dir),
            "--data",
            str(args.data),
            "--quantization",
            manifest.quantization or conversion.AUTO,
            "--name",
            manifest.name or args.model_dir.name,
        ]
    )
    if code == ExitCode.OK:
        written = json.loads((args.model_dir / artifact.MANIFEST).read_text()).get("ood", {})
        print(f"ood: {json.dumps(written)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
