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
from collections.abc import Callable

from aws_lambda_powertools import Logger

from imgclf import artifact, registry
from imgclf.artifact import LoadedModel
from imgclf.errors import ModelUnavailable, NotFound
from imgclf.settings import ServeSettings


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
            self._live = artifact.load(
                artifact.read_dir(path), self._settings.num_threads, name=self._settings.model_name
            )
        except Exception:  # noqa: BLE001 - whatever breaks, the container answers 503, not crash
            self._logger.exception("the bundled model cannot be loaded", extra={"path": str(path)})
            return
        self._logger.info("model loaded", extra={"model": self._live.ref, "source": str(path)})

    def _load_version(self, version: str) -> LoadedModel:
        assert self._registry is not None
        files = self._registry.read_version(version)
        return artifact.load(
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
