"""A tiny real run of the pipeline: Keras Tuner search, final fit, evaluation, TFLite + parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import convert
import train
from helpers import encode, scene_image
from imgclf.pipeline.conversion import Gate, ParityReport
from imgclf.pipeline.data import find_splits, load_split
from imgclf.pipeline.model import make_dataset
from imgclf.preprocess import CENTER_CROP, load_image
from imgclf.runtime import TFLiteModel

pytestmark = pytest.mark.slow
SIZE = "48"


@pytest.fixture(scope="module")
def trained(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train")
    assert (
        train.main(
            [
                "--data",
                str(sample_data),
                "--out",
                str(out),
                "--quick",
                "--image-size",
                SIZE,
                "--backbone",
                "none",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def converted(trained: Path, sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted")
    args = ["--model-dir", str(trained), "--data", str(sample_data), "--out", str(out)]
    assert convert.main([*args, "--quantization", "float16"]) == 0
    return out


def test_training_writes_the_artifacts(trained: Path) -> None:
    for name in (
        "model.keras",
        "labels.json",
        "metrics.json",
        "plots/training_curves.png",
        "plots/confusion_matrix.png",
    ):
        assert (trained / name).stat().st_size > 0, name
    labels = json.loads((trained / "labels.json").read_text())
    assert labels == ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert set(metrics["per_class"]) == set(labels)
    assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["count"] == 24
    assert len(metrics["tuner"]["trials"]) == 2
    assert set(metrics["hyperparameters"]) >= {
        "conv_blocks",
        "filters",
        "learning_rate",
        "augmentation",
    }
    assert metrics["data"]["test"] == dict.fromkeys(labels, 4)
    assert metrics["seed"] == 0 and "keras-tuner" in metrics["versions"]
    # saved for inference and warm starts: no optimizer state (it would triple the file)
    assert not keras.models.load_model(trained / "model.keras").compiled


def test_an_interrupted_search_resumes(
    trained: Path, sample_data: Path, capsys: pytest.CaptureFixture
) -> None:
    trials = sorted(p.name for p in (trained / "tuner" / "random").glob("trial_*"))
    rerun = [
        "--data",
        str(sample_data),
        "--out",
        str(trained),
        "--quick",
        "--image-size",
        SIZE,
        "--backbone",
        "none",
    ]
    assert train.main(rerun) == 0
    assert "Reloading Tuner" in capsys.readouterr().out
    assert sorted(p.name for p in (trained / "tuner" / "random").glob("trial_*")) == trials


def test_conversion_writes_a_manifest_that_describes_the_model(
    converted: Path, trained: Path
) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    content = (converted / "model.tflite").read_bytes()
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(content).hexdigest()
    assert manifest["size_bytes"] == len(content)
    assert manifest["quantization"] == "float16"
    assert manifest["quantization_reason"].startswith("float16 requested: float16 held the gate")
    assert manifest["gate"]["labelled"] and manifest["gate"]["candidates"]["float16"]["passed"]
    # the framing train.py recorded; models from before framings were recorded squashed
    framing = json.loads((trained / "metrics.json").read_text()).get("framing", "squash_bilinear")
    assert manifest["framing"] == framing
    assert manifest["input"]["shape"] == [1, 48, 48, 3]
    assert manifest["classes"] == json.loads((trained / "labels.json").read_text())
    assert manifest["parity"]["agreement"] >= 0.99
    assert manifest["source"]["keras_sha256"]
    for name in ("model.keras", "labels.json", "metrics.json"):
        assert (converted / name).read_bytes() == (trained / name).read_bytes()


@pytest.mark.parametrize("quantization", ["float32", "dynamic", "int8"])
def test_every_quantization_converts_and_serves(
    quantization: str, trained: Path, sample_data: Path, tmp_path: Path
) -> None:
    args = ["--model-dir", str(trained), "--data", str(sample_data), "--out", str(tmp_path)]
    # int8 on a 1-epoch model can lose more than a point; --force keeps the test about conversion.
    assert convert.main([*args, "--quantization", quantization, "--force"]) == 0
    lite = TFLiteModel((tmp_path / "model.tflite").read_bytes())
    assert lite.input.dtype == ("uint8" if quantization == "int8" else "float32")
    probs = lite.predict(np.zeros((48, 48, 3), np.uint8))
    assert probs.shape == (6,) and abs(float(probs.sum()) - 1.0) < 0.05


def test_train_and_serve_see_the_same_pixels(converted: Path, sample_data: Path) -> None:
    """The training pipeline's input and the served input are the same numbers for the same file."""
    model = keras.models.load_model(converted / "model.keras")
    test_dir = find_splits(sample_data)[1]
    data = load_split(test_dir, 48, 48)
    batch, _ = next(iter(make_dataset(data.x, data.y, len(data.x), None, seed=0)))
    served = np.stack([load_image(path.read_bytes(), 48, 48) for path in data.files])
    np.testing.assert_array_equal(batch.numpy(), served.astype(np.float32))
    lite = TFLiteModel((converted / "model.tflite").read_bytes())
    keras_probs = model.predict(batch, verbose=0)
    lite_probs = np.stack([lite.predict(p) for p in served])
    np.testing.assert_allclose(keras_probs, lite_probs, atol=2e-3)


# ---- the parity gate ---------------------------------------------------------------------------
CLASSES = ["buildings", "forest", "glacier", "mountain", "sea", "street"]


def pooled_model_dir(
    folder: Path, kernel: np.ndarray, bias: np.ndarray | None = None, metrics: dict | None = None
) -> Path:
    """A real (tiny) model directory: mean colour -> Dense(6) -> softmax, with the given weights."""
    inputs = keras.Input((48, 48, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(6, activation="softmax")(pooled)
    model = keras.Model(inputs, outputs)
    bias = np.zeros(6) if bias is None else bias
    model.layers[-1].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    folder.mkdir()
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(CLASSES))
    metrics = {"accuracy": 0.2, "macro_f1": 0.1} if metrics is None else metrics
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def gate_args(model_dir: Path, data: Path, out: Path) -> list[str]:
    return ["--model-dir", str(model_dir), "--data", str(data), "--out", str(out)]


def test_conversion_refuses_a_model_that_fails_parity(sample_data: Path, tmp_path: Path) -> None:
    # A classifier whose class scores differ by less than float16 can represent: converted to
    # float16, its answers collapse onto one class, so agreement with Keras falls far below 99%.
    rng = np.random.default_rng(0)
    model_dir = pooled_model_dir(tmp_path / "tie", 1.0 + rng.normal(0, 1e-5, size=(3, 6)))
    out = tmp_path / "out"
    args = gate_args(model_dir, sample_data, out)
    assert convert.main([*args, "--quantization", "float16"]) == 3
    # auto: int8 fails, and so does its float16 fallback
    assert convert.main(args) == 3
    assert not out.exists() or not any(out.iterdir())
    assert convert.main([*args, "--quantization", "float32"]) == 0  # float32 keeps the ties apart


def test_auto_falls_back_to_float16_when_int8_fails_the_gate(
    sample_data: Path, tmp_path: Path
) -> None:
    # GIVEN a classifier whose probabilities differ by less than int8's output step (1/256): all
    # near 1/6, ranked by logits 1e-3 apart. float16 keeps them apart (it computes in float32
    # with half-precision weights, relatively exact), int8 rounds most of them to ties.
    rng = np.random.default_rng(0)
    model_dir = pooled_model_dir(tmp_path / "flat", rng.normal(0, 2e-5, size=(3, 6)))
    out = tmp_path / "out"
    args = gate_args(model_dir, sample_data, out)

    # WHEN int8 is asked for explicitly, THEN it is refused and nothing is written
    assert convert.main([*args, "--quantization", "int8"]) == 3
    assert not out.exists() or not any(out.iterdir())

    # WHEN auto, THEN float16 is written with the reason and both candidates' figures
    assert convert.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"] == "float16"
    assert manifest["quantization_reason"].startswith(
        "auto fell back to float16: int8 failed the gate (top-1 agreement 0."
    )
    int8, float16 = (manifest["gate"]["candidates"][q] for q in ("int8", "float16"))
    assert not int8["passed"] and int8["agreement"] < 0.98
    assert float16["passed"] and float16["agreement"] >= 0.99
    assert manifest["parity"] == {k: v for k, v in float16.items() if k not in ("passed", "checks")}
    assert TFLiteModel((out / "model.tflite").read_bytes()).input.dtype == "float32"


def test_auto_writes_int8_when_the_gate_holds(sample_data: Path, tmp_path: Path) -> None:
    # GIVEN a brightness threshold (bright: buildings, else forest; the rest never), the threshold
    # in the widest gap between the test images' brightness, so every answer has a wide margin;
    # and a framing recorded in its metrics.json, which the gate's images are framed with
    framing = CENTER_CROP
    files = load_split(find_splits(sample_data)[1], 48, 48).files
    brightness = np.sort(
        [load_image(f.read_bytes(), 48, 48, framing=framing).mean() for f in files]
    )
    widest = int(np.argmax(np.diff(brightness)))
    threshold = (brightness[widest] + brightness[widest + 1]) / 2
    kernel = np.full((3, 6), -0.1)
    kernel[:, :2] = [1 / 3, 0.0]
    bias = np.array([-threshold, 0, 0, 0, 0, 0])
    metrics = {"accuracy": 0.3, "macro_f1": 0.2, "framing": framing.name}
    model_dir = pooled_model_dir(tmp_path / "bright", kernel, bias, metrics)
    out = tmp_path / "out"

    # WHEN
    assert convert.main(gate_args(model_dir, sample_data, out)) == 0

    # THEN int8, with the gate's figures and the framing; pixels go in as they are
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"] == "int8"
    assert manifest["quantization_reason"] == (
        "auto chose int8: int8 held the gate (accuracy drop 0.0000 <= 0.01, "
        "top-1 agreement 1.0000 >= 0.98)"
    )
    assert list(manifest["gate"]["candidates"]) == ["int8"]
    assert manifest["framing"] == "crop_0.875_bicubic"
    assert manifest["metrics"] == {"accuracy": 0.3, "macro_f1": 0.2}
    lite = TFLiteModel((out / "model.tflite").read_bytes())
    assert (lite.input.dtype, lite.input.scale, lite.input.zero_point) == ("uint8", 1.0, 0)


def test_the_gate_holds_int8_to_its_own_limits() -> None:
    def report(agreement: float, top5: float, accuracy: tuple[float, float] | None) -> ParityReport:
        keras_acc, lite_acc = accuracy or (None, None)
        return ParityReport(100, agreement, top5, keras_acc, lite_acc, 0.1, 1.0, 1000)

    gate = Gate()
    failed = {
        q: [str(c) for c in gate.checks(r, q) if not c.passed]
        for q, r in {
            # labelled: one point of accuracy may go, and 2% of the top-1 answers
            "int8": report(0.98, 0.5, (0.99, 0.98)),
            "float16": report(0.99, 1.0, None),
        }.items()
    }
    assert failed == {"int8": [], "float16": []}
    assert [str(c) for c in gate.checks(report(0.97, 1.0, (0.9, 0.88)), "int8")] == [
        "accuracy drop 0.0200 > 0.01",
        "top-1 agreement 0.9700 < 0.98",
    ]
    # without labels: 95% of the top-1 answers, and the float top-1 in the top-5 on 99%
    assert [c.passed for c in gate.checks(report(0.95, 0.99, None), "int8")] == [True, True]
    assert [str(c) for c in gate.checks(report(0.94, 0.98, None), "int8")] == [
        "top-1 agreement 0.9400 < 0.95",
        "float top-1 in int8 top-5 0.9800 < 0.99",
    ]
    assert [c.passed for c in gate.checks(report(0.985, 1.0, None), "dynamic")] == [False]


def test_warm_start_fine_tunes_and_adapts_to_a_new_class(
    trained: Path, sample_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    for split, count in (("seg_train", 6), ("seg_test", 2)):
        folder = data / split / "desert"
        folder.mkdir()
        for i in range(count):
            (folder / f"{i}.jpg").write_bytes(
                encode(scene_image("glacier", seed=100 + i).convert("L").convert("RGB"))
            )
    out = tmp_path / "warm"
    argv = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--warm-start",
        str(trained / "model.keras"),
        "--epochs",
        "1",
    ]
    assert train.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["warm_start"] and metrics["tuner"] is None
    assert "desert" in metrics["classes"] and len(metrics["classes"]) == 7
    assert keras.models.load_model(out / "model.keras").output_shape == (None, 7)


def test_a_dataset_with_one_class_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for split in ("seg_train", "seg_test"):
        (tmp_path / split / "forest").mkdir(parents=True)
        (tmp_path / split / "forest" / "a.jpg").write_bytes(encode(scene_image("forest")))
    assert train.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--quick"]) == 2
    assert "needs 2" in capsys.readouterr().err
