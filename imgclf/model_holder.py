"""The model a serving container answers with: loaded once, refreshed from the registry, pinnable.

With no registry (MODEL_REGISTRY_URI empty) the bundled model directory MODEL_DIR is served. With
a registry, the ``live`` alias is resolved at cold start and re-checked (with its ETag) at most
every MODEL_REFRESH_SECONDS; a new version is downloaded, verified, loaded and warmed up before it
replaces the old one, and a failed refresh keeps the last good model. A request may pin a
published version, kept in a small LRU cache. Not thread-safe: a Lambda environment serves one
request at a time.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger

from imgclf import registry
from imgclf.errors import ModelUnavailable, NotFound
from imgclf.runtime import TFLiteModel
from imgclf.settings import ServeSettings

BUNDLED_VERSION = "bundled"


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded and warmed-up model with what describes it."""

    name: str
    version: str
    model: TFLiteModel
    labels: tuple[str, ...]
    manifest: Mapping[str, Any]

    @property
    def ref(self) -> dict[str, str]:
        """The ``{"name", "version"}`` every answer carries."""
        return {"name": self.name, "version": self.version}

    def describe(self) -> dict[str, Any]:
        """The body of ``GET /model``."""
        return {
            "model": self.ref,
            "classes": list(self.labels),
            "input": self.model.input.as_dict(),
            "output": self.model.output.as_dict(),
            "quantization": self.manifest.get("quantization"),
            "metrics": self.manifest.get("metrics", {}),
            "sha256": self.manifest["sha256"],
            "runtime": {"name": self.model.runtime.name, "version": self.model.runtime.version},
        }


def load_model(
    files: dict[str, bytes], num_threads: int, *, version: str | None = None, name: str = ""
) -> LoadedModel:
    """Verifies a model's files, loads the model and runs one warm-up inference.

    Args:
        files: file name -> content, as a model directory or a registry version holds them.
        num_threads: interpreter threads.
        version: the registry version; None for a model directory, whose manifest's
            ``version`` is used if it has one, else ``"bundled"``.
        name: the model name when the manifest has none.

    Returns:
        The loaded model.

    Raises:
        registry.InvalidModel: a missing file, a sha256 mismatch, a flatbuffer that does not
            load, or a tensor spec / classes that do not match the manifest.
    """
    manifest = registry.verify_model_files(files)
    try:
        model = TFLiteModel(files["model.tflite"], num_threads=num_threads)
    except ValueError as exc:
        raise registry.InvalidModel(str(exc)) from exc
    registry.check_model_spec(model, manifest)
    # The first invoke after loading costs ~15 ms more than the next ones: pay it now.
    model.predict(np.zeros((model.height, model.width, 3), dtype=np.uint8))
    return LoadedModel(
        name=str(manifest.get("name") or name),
        version=version or str(manifest.get("version") or BUNDLED_VERSION),
        model=model,
        labels=tuple(manifest["classes"]),
        manifest=manifest,
    )


def read_model_dir(path: Path) -> dict[str, bytes]:
    """Reads the serving files of a model directory (the bundled ``model/``).

    Args:
        path: the directory.

    Returns:
        file name -> content, for the files present.
    """
    return {n: (path / n).read_bytes() for n in registry.SERVING_FILES if (path / n).is_file()}


class ModelHolder:
    """Holds the live model (and a few pinned versions) of one serving container."""

    def __init__(
        self, settings: ServeSettings, logger: Logger, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Loads the model (bundled or the registry's live version) once, at cold start.

        A model that cannot be loaded is logged, not raised: the container then answers 503
        (and, with a registry, tries again at the next refresh).

        Args:
            settings: the serving settings.
            logger: where loads and failed refreshes are logged.
            clock: monotonic seconds (tests pass their own to step through refreshes).
        """
        self._settings = settings
        self._logger = logger
        self._clock = clock
        self._live: LoadedModel | None = None
        self._pinned: OrderedDict[str, LoadedModel] = OrderedDict()
        self._etag: str | None = None
        self._checked_at = -math.inf
        self._registry: registry.Registry | None = None
        if settings.model_registry_uri:
            self._registry = registry.open_registry(
                settings.model_registry_uri, settings.model_name
            )
            self._refresh()
        else:
            self._load_bundled()

    def get(self, version: str | None = None) -> LoadedModel:
        """Returns the live model, or the published ``version`` when one is pinned.

        Args:
            version: a published version, or None for the live one.

        Returns:
            The model to answer with.

        Raises:
            ModelUnavailable: no live model is loaded, or the pinned version cannot be loaded.
            NotFound: the pinned version does not exist.
        """
        if (
            self._registry is not None
            and self._clock() - self._checked_at >= self._settings.model_refresh_seconds
        ):
            self._refresh()
        live = self._live
        if version is None:
            if live is None:
                raise ModelUnavailable("no model is loaded")
            return live
        if self._registry is None:
            if live is not None and version == live.version:
                return live
            raise NotFound(
                f"model version {version!r} is not available: this function serves its bundled "
                "model only",
                code="version_not_found",
            )
        return self._get_pinned(version)

    def _load_bundled(self) -> None:
        path = self._settings.model_dir
        try:
            self._live = load_model(
                read_model_dir(path), self._settings.num_threads, name=self._settings.model_name
            )
        except Exception:  # noqa: BLE001 - whatever breaks, the container answers 503, not crash
            self._logger.exception("the bundled model cannot be loaded", extra={"path": str(path)})
            return
        self._logger.info("model loaded", extra={"model": self._live.ref, "source": str(path)})

    def _load_version(self, version: str) -> LoadedModel:
        assert self._registry is not None
        files = self._registry.read_version(version)
        return load_model(
            files, self._settings.num_threads, version=version, name=self._settings.model_name
        )

    def _refresh(self) -> None:
        """Follows the live alias if it moved; any failure keeps the current model."""
        assert self._registry is not None
        self._checked_at = self._clock()
        current = self._live.version if self._live else None
        try:
            pointer, etag = self._registry.read_live(self._etag)
            if pointer is None:
                return  # unchanged since the ETag we hold
            version = str(pointer["version"])
            if version != current:
                self._live = self._pinned.pop(version, None) or self._load_version(version)
                self._logger.info("model loaded", extra={"model": self._live.ref})
            # Only remembered once the version it names is in place, so a failed load is retried.
            self._etag = etag
        except Exception:  # noqa: BLE001 - whatever breaks, serving goes on with the last good model
            self._logger.exception("model refresh failed", extra={"kept_version": current})

    def _get_pinned(self, version: str) -> LoadedModel:
        try:
            version = registry.format_version(version)  # "7" and "0007" are one version
            if self._live is not None and version == self._live.version:
                return self._live
            model = self._pinned.get(version) or self._load_version(version)
        except registry.VersionNotFound as exc:
            raise NotFound(
                f"model version {version!r} does not exist", code="version_not_found"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - a broken version must not become a 500
            self._logger.exception("pinned version failed to load", extra={"version": version})
            raise ModelUnavailable(f"model version {version!r} cannot be loaded") from exc
        self._pinned[version] = model
        self._pinned.move_to_end(version)
        while len(self._pinned) > self._settings.model_cache_size:
            self._pinned.popitem(last=False)
        return model
