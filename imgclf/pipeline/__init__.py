"""The training pipeline: data, model, training, evaluation, conversion (TensorFlow lives here).

Each stage with a command line runs as ``python -m imgclf.pipeline.<stage>``; ``train.py`` and
``convert.py`` at the repository root are the same commands. Nothing here is imported by serving.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How the pipeline's commands end; the retrain job reads these rather than numbers."""

    OK = 0
    # A training or conversion error: bad data, bad arguments, a model that cannot be built.
    FAILED = 2
    # The converted model disagreed with the Keras model: nothing was written.
    PARITY_FAILED = 3

    def describe(self) -> str:
        """A few words for a job record."""
        return {
            ExitCode.OK: "done",
            ExitCode.FAILED: "failed",
            ExitCode.PARITY_FAILED: "the parity check refused the converted model",
        }[self]
