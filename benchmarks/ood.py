"""How well each bundled model's OOD score tells its own data from inputs far from it.

    python -m benchmarks.ood            # = make ood: prints the table, writes docs/ood.{md,json}

Per bundled model (``model/<name>/`` with ``ood.npz``), the AUROC of the served ``ood.score``
between held-out in-distribution images (positives: 0) and far inputs (1). One rule picks both
sets from what the model was trained on, the dataset ``config.data`` of its ``metrics.json``
records (``benchmarks.datasets``):

- in-distribution: the test split of that dataset (``data/photos/test`` for ``content``,
  ``data/sample/seg_test`` for ``scene``); the pretrained ``imagenet`` records none (ImageNet-1k,
  no ImageNet images offline) and uses its gate photos instead (the reference that calibrates the
  score, not the one that fitted it);
- far: inputs unlike the training data. A model trained on the synthetic sample data
  (``data/sample``: ``scene``) is shown real photos: the ones that ship with matplotlib
  (``sample_data``), scikit-image (``data``) and scikit-learn (``datasets/images``). Every other
  model was trained on real photos (``imagenet``; ``content`` on ``data/photos``, crops of those
  very package photos, so they cannot be far for it) and is shown clearly non-photo inputs:
  seeded noise, flat colours, gradients, text renderings, and the synthetic scene drawings of
  ``data/sample/seg_test``.

The score is an empirical CDF with ties at 1.0, so the AUROC of the underlying distance (the same
ranking without the ties) is reported next to it, with the share of each set marked ``unusual``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.datasets import SAMPLE, dataset_folder, model_dataset
from imgclf import artifact
from imgclf.artifact import LoadedModel
from imgclf.errors import ServiceError
from imgclf.pipeline.data import find_splits
from imgclf.preprocess import IMAGE_SUFFIXES, load_image
from imgclf.settings import PROJECT_ROOT

MODELS_DIR = PROJECT_ROOT / "model"
DEFAULT_OUT = PROJECT_ROOT / "docs" / "ood"
PHOTO_FOLDERS = (
    ("matplotlib", "mpl-data/sample_data"),
    ("skimage", "data"),
    ("sklearn", "datasets/images"),
)
SEED = 0
TARGET = {"scene": 0.9}


@dataclass(frozen=True)
class Inputs:
    """One set of encoded images and where they come from."""

    description: str
    images: list[tuple[str, bytes]]


# What a model was trained on, as the rule tells them apart.
SYNTHETIC = "synthetic drawings"
PHOTOS = "real photos"


def package_photos() -> Inputs:
    """Every photo file in the matplotlib, scikit-image and scikit-learn data folders."""
    images = []
    for package, folder in PHOTO_FOLDERS:
        root = Path(str(importlib.resources.files(package).joinpath(folder)))
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append((f"{package}/{path.relative_to(root)}", path.read_bytes()))
    return Inputs("real photos shipped with matplotlib, scikit-image, scikit-learn", images)


def folder_images(folder: Path, description: str) -> Inputs:
    """The image files under a folder (a dataset split)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return Inputs(description, [(str(p.relative_to(folder)), p.read_bytes()) for p in paths])


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def synthetic_inputs(count: int = 20, size: int = 256) -> Inputs:
    """Seeded non-photos: noise, flat colours, gradients and text renderings, ``count`` each."""
    rng = np.random.default_rng(SEED)
    images: list[tuple[str, bytes]] = []
    for i in range(count):
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        images.append((f"noise/{i}", _png(Image.fromarray(noise))))
        smooth = rng.normal(128, 40, (size // 16, size // 16, 3)).clip(0, 255).astype(np.uint8)
        blobs = Image.fromarray(smooth).resize((size, size), Image.Resampling.BICUBIC)
        images.append((f"smooth_noise/{i}", _png(blobs)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        images.append((f"flat/{i}", _png(Image.new("RGB", (size, size), colour))))
        ramp = np.linspace(0, 1, size)[np.newaxis, :, np.newaxis]
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        gradient = (a + (b - a) * ramp).repeat(size, axis=0).astype(np.uint8)
        images.append((f"gradient/{i}", _png(Image.fromarray(gradient))))
        page = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        words = ["invoice", "lambda", "total", "model", "page", "2024", "serverless", "image"]
        for line in range(12):
            text = " ".join(rng.choice(words, 4))
            draw.text((8, 8 + line * 20), text, fill=(0, 0, 0))
        images.append((f"text/{i}", _png(page)))
    return Inputs(
        "synthetic non-photos: noise, smooth noise, flat colours, gradients, text", images
    )


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """The probability that a positive scores above a negative (ties count a half)."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    greater = (pos[:, np.newaxis] > neg[np.newaxis]).sum()
    ties = (pos[:, np.newaxis] == neg[np.newaxis]).sum()
    return float((greater + 0.5 * ties) / (len(neg) * len(pos)))


def measure(model: LoadedModel, inputs: Inputs) -> dict[str, Any]:
    """The OOD distance and score of every image a model can decode."""
    assert model.ood is not None
    distances, names = [], []
    for name, data in inputs.images:
        try:
            pixels = load_image(data, model.height, model.width, framing=model.framing)
        except ServiceError:
            continue  # too small or not decodable: serving would refuse it too
        features = model.interpreter.classify(pixels)[1]
        assert features is not None
        distances.append(float(model.ood.distances(features[np.newaxis])[0]))
        names.append(name)
    d = np.array(distances)
    scores = model.ood.scores(d)
    return {"names": names, "distances": d, "scores": scores}


def _shown(folder: Path, root: Path) -> str:
    """A folder as the report names it: relative to the project root when inside it."""
    return str(folder.relative_to(root) if folder.is_relative_to(root) else folder)


def trained_on(model_dir: Path, root: Path = PROJECT_ROOT) -> tuple[str, Path | None]:
    """What a model was trained on (``SYNTHETIC`` or ``PHOTOS``) and that dataset's folder.

    The synthetic sample data (``data/sample``) is the one dataset of drawings; every other dataset
    (``data/photos``), and no recorded dataset (the pretrained ``imagenet``: ImageNet), is photos.

    Raises:
        DatasetMissing: the dataset ``metrics.json`` records is not there.
    """
    dataset = model_dataset(model_dir, root)
    synthetic = dataset is not None and dataset.resolve() == (root / SAMPLE).resolve()
    return (SYNTHETIC if synthetic else PHOTOS), dataset


def reference_sets(
    model: LoadedModel, model_dir: Path, root: Path = PROJECT_ROOT
) -> tuple[str, Inputs, list[Inputs]]:
    """The module's rule: the model's own held-out images, and inputs unlike its training data.

    Returns:
        ``(trained_on, in-distribution, far sets)``.

    Raises:
        DatasetMissing: the model's dataset, or for a photo model the sample data, is missing.
        ValueError: a model without a recorded dataset that is not the pretrained one.
    """
    kind, dataset = trained_on(model_dir, root)
    if dataset is not None:
        test_dir = find_splits(dataset)[1]
        near = folder_images(test_dir, f"its test split ({_shown(test_dir, root)})")
    else:
        from imgclf.pipeline import pretrained  # noqa: PLC0415 - its gate photos (imports Keras)

        if model_dir.name != pretrained.NAME:
            raise ValueError(
                f"model/{model_dir.name}: its metrics.json records no dataset (config.data), so "
                "it has no test split to score"
            )
        gate = pretrained.photo_pixels(
            pretrained.GATE_PHOTOS, pretrained.GATE_VARIANTS, pretrained.SEED, model.height
        )
        near = Inputs(
            f"the {len(gate)} gate-photo images (calibration reference)",
            [(f"gate/{i}", _png(Image.fromarray(x))) for i, x in enumerate(gate)],
        )
    if kind == SYNTHETIC:
        return kind, near, [package_photos()]
    why = f"the far inputs of model/{model_dir.name}, trained on real photos"
    drawings = find_splits(dataset_folder(SAMPLE, why, root))[1]
    description = f"synthetic scene drawings ({_shown(drawings, root)})"
    far = [synthetic_inputs(), folder_images(drawings, description)]
    return kind, near, far


def evaluate(name: str, model_dir: Path, root: Path = PROJECT_ROOT) -> dict[str, Any] | None:
    """One bundled model's figures, or None when it has no OOD statistics.

    Args:
        name: the model's name.
        model_dir: its folder.
        root: what the datasets' folders are relative to (the project root).
    """
    model = artifact.load(artifact.read_dir(model_dir))
    if model.ood is None:
        return None
    kind, near, far_sets = reference_sets(model, model_dir, root)
    inside = measure(model, near)
    far = [measure(model, s) for s in far_sets]
    far_d = np.concatenate([f["distances"] for f in far])
    far_s = np.concatenate([f["scores"] for f in far])
    threshold = artifact.OOD_THRESHOLD
    result = {
        "model": name,
        "in_distribution": {"description": near.description, "images": len(inside["names"])},
        "far": {
            "description": "; ".join(s.description for s in far_sets),
            "images": int(len(far_d)),
        },
        "auroc_score": round(auroc(inside["scores"], far_s), 4),
        "auroc_distance": round(auroc(inside["distances"], far_d), 4),
        "threshold": threshold,
        "unusual_in_distribution": round(float(np.mean(inside["scores"] > threshold)), 4),
        "unusual_far": round(float(np.mean(far_s > threshold)), 4),
        "median_score_in_distribution": round(float(np.median(inside["scores"])), 4),
        "median_score_far": round(float(np.median(far_s)), 4),
        "ood_npz_bytes": (model_dir / artifact.OOD).stat().st_size,
        "target_auroc": TARGET.get(name),
        "trained_on": kind,
        # Every far photo; of the non-photos, the first two of each synthetic kind (no drawing).
        "far_scores": {
            n: round(float(s), 4)
            for f in far
            for n, s in zip(f["names"], f["scores"], strict=True)
            if kind == SYNTHETIC or n.endswith(("/0", "/1"))
        },
    }
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    """docs/ood.md."""
    lines = [
        "# Out-of-distribution scores",
        "",
        "Generated by `make ood` (`python -m benchmarks.ood`); do not edit by hand. Every answer",
        'of a model with `ood.npz` carries `"ood": {"score", "unusual"}`: the score is the share',
        "of the model's held-out in-distribution images whose penultimate features were closer",
        "to its training data (class-conditional Gaussians, shared covariance, PCA-reduced), and",
        f"`unusual` is `score > {artifact.OOD_THRESHOLD}`. AUROC: how often a far input scores",
        "above an in-distribution one (1.0 = always, 0.5 = chance).",
        "",
        "In-distribution: the test split of the dataset the model was trained on (`config.data`",
        "of its `metrics.json`; `imagenet`, which has none offline: its gate photos). Far: inputs",
        "unlike that data. A model trained on the synthetic sample data (`data/sample`) is shown",
        "the real photos that ship with matplotlib, scikit-image and scikit-learn; a model",
        "trained on real photos (`imagenet`; `data/photos`, crops of those same package photos)",
        "is shown non-photos (noise, flat colours, gradients, text) and the synthetic scene",
        "drawings of `data/sample/seg_test`.",
        "",
        "| model | trained on | in-distribution | far inputs | AUROC (score) | AUROC (distance) "
        "| unusual: in-dist. | unusual: far | ood.npz |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['trained_on']} | {r['in_distribution']['description']}: "
            f"{r['in_distribution']['images']} | {r['far']['description']}: {r['far']['images']} "
            f"| {r['auroc_score']:.4f} | {r['auroc_distance']:.4f} "
            f"| {r['unusual_in_distribution']:.1%} | {r['unusual_far']:.1%} "
            f"| {r['ood_npz_bytes'] / 1024:.1f} KiB |"
        )
    for r in results:
        listed = "" if r["trained_on"] == SYNTHETIC else " (the first two of each non-photo kind)"
        lines += ["", f"## {r['model']}: scores of the far inputs{listed}", ""]
        lines += [f"- `{n}`: {s:.4f}" for n, s in r["far_scores"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Prints the table and writes ``OUT.md`` and ``OUT.json``; exit 1 below a target."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ood", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.md, OUT.json")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="bundled model folders")
    args = parser.parse_args(argv)
    results = []
    for folder in sorted(p for p in args.models.iterdir() if (p / artifact.MANIFEST).is_file()):
        try:
            result = evaluate(folder.name, folder)
        except ValueError as exc:  # DatasetMissing names the make target that builds the data
            parser.error(str(exc))
        if result is None:
            print(f"{folder.name}: no ood.npz, skipped")
            continue
        results.append(result)
        print(
            f"{folder.name}: AUROC {result['auroc_score']:.4f} (distance "
            f"{result['auroc_distance']:.4f}); unusual {result['unusual_in_distribution']:.1%} "
            f"of in-distribution, {result['unusual_far']:.1%} of far inputs"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(results))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    missed = [
        r["model"] for r in results if r["target_auroc"] and r["auroc_score"] < r["target_auroc"]
    ]
    if missed:
        print(f"below target: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
