"""The models a serving container answers with: loaded once, refreshed from the registry, pinnable.

``ModelCatalog`` holds one ``ModelHolder`` per model name: the default model (MODEL_NAME) is loaded
at cold start, any other on its first request. With no registry (MODEL_REGISTRY_URI empty) the
bundled models are served: one folder per name under MODEL_DIR (``model/<name>/``). With a
registry, each model's ``live`` alias is resolved when it is first used and re-checked (with its
ETag: one conditional GET) at most every MODEL_REFRESH_SECONDS; a new version is downloaded,
verified, loaded and warmed up before it replaces the old one, and a failed refresh keeps the last
good model and says so (``problem``). A request may pin a published version, kept in a small LRU
cache. Not thread-safe: a Lambda environment serves one request at a time.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from imgclf import artifact, layout, registry
from imgclf.artifact import LoadedModel
from imgclf.errors import ModelUnavailable, NotFound
from imgclf.settings import ServeSettings
from imgclf.storage import Store, open_store


class ModelHolder:
    """Holds the live version (and a few pinned versions) of one model."""

    def __init__(
        self,
        settings: ServeSettings,
        logger: Logger,
        clock: Callable[[], float] = time.monotonic,
        *,
        name: str | None = None,
        store: Store | None = None,
    ) -> None:
        """Loads the model (bundled or the registry's live version) once.

        A model that cannot be loaded is logged, not raised: the container then answers 503
        (and, with a registry, tries again at the next refresh).

        Args:
            settings: the serving settings.
            logger: where loads and failed refreshes are logged.
            clock: monotonic seconds (tests pass their own to step through refreshes).
            name: the model (default: MODEL_NAME).
            store: the registry's store, shared by a catalog's holders (default: opened here).
        """
        self.name = name or settings.model_name
        self._settings = settings
        self._logger = logger
        self._clock = clock
        self._live: LoadedModel | None = None
        self._pinned: OrderedDict[str, LoadedModel] = OrderedDict()
        self._etag: str | None = None
        self._checked_at = -math.inf
        self._registry: registry.Registry | None = None
        # Why the last load or refresh failed, while it stays failed (``/health`` shows it).
        self.problem: str | None = None
        if settings.model_registry_uri:
            store = store or open_store(settings.model_registry_uri)
            self._registry = registry.Registry(store, self.name)
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

    @property
    def live(self) -> LoadedModel | None:
        """The live version as loaded now (no refresh), or None."""
        return self._live

    def _load_bundled(self) -> None:
        path = self._settings.model_dir / self.name
        try:
            self._live = artifact.load(
                artifact.read_dir(path), self._settings.num_threads, name=self.name
            )
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the container answers 503
            self.problem = f"the bundled model cannot be loaded: {type(exc).__name__}: {exc}"
            self._logger.exception("the bundled model cannot be loaded", extra={"path": str(path)})
            return
        self._logger.info("model loaded", extra={"model": self._live.ref, "source": str(path)})

    def _load_version(self, version: str) -> LoadedModel:
        assert self._registry is not None
        files = self._registry.read_version(version)
        return artifact.load(files, self._settings.num_threads, version=version, name=self.name)

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
            self.problem = None
        except Exception as exc:  # noqa: BLE001 - whatever breaks, serving keeps the last good model
            self.problem = f"refresh failed, serving {current}: {type(exc).__name__}: {exc}"
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


class ModelCatalog:
    """Every model a serving container can answer with, by name."""

    def __init__(
        self, settings: ServeSettings, logger: Logger, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Loads the default model now (cold start); the others on their first request.

        Args:
            settings: the serving settings (MODEL_NAME is the default model).
            logger: where loads and failed refreshes are logged.
            clock: monotonic seconds, passed to every holder.
        """
        self.default = settings.model_name
        self._settings = settings
        self._logger = logger
        self._clock = clock
        self._store = (
            open_store(settings.model_registry_uri) if settings.model_registry_uri else None
        )
        self._holders: dict[str, ModelHolder] = {}
        self._holders[self.default] = self._new_holder(self.default)

    def _new_holder(self, name: str) -> ModelHolder:
        return ModelHolder(self._settings, self._logger, self._clock, name=name, store=self._store)

    def names(self) -> list[str]:
        """The models there are: the registry's, or the bundled folders (the default first)."""
        if self._store is not None:
            found = registry.list_models(self._store)
        else:
            root = self._settings.model_dir
            found = [p.parent.name for p in root.glob(f"*/{artifact.MANIFEST}")]
        names = sorted(n for n in found if layout.NAME.fullmatch(n))
        return [self.default, *(n for n in names if n != self.default)]

    def holder(self, name: str | None = None) -> ModelHolder:
        """The holder of a model (default: the default model).

        Raises:
            NotFound: no model by that name.
        """
        name = name or self.default
        held = self._holders.get(name)
        if held is not None:
            return held
        if not layout.NAME.fullmatch(name) or name not in self.names():
            raise NotFound(f"no model named {name!r}", code="model_not_found")
        held = self._holders[name] = self._new_holder(name)
        return held

    def get(self, name: str | None = None, version: str | None = None) -> LoadedModel:
        """The live (or pinned ``version``) model of ``name`` (default: the default model).

        Raises:
            NotFound: no such model or version.
            ModelUnavailable: it cannot be loaded.
        """
        return self.holder(name).get(version)

    def registry(self, name: str) -> registry.Registry | None:
        """The registry client of a model, or None when serving bundled models."""
        return registry.Registry(self._store, name) if self._store is not None else None

    def summary(self, name: str) -> dict[str, Any]:
        """What ``GET /models`` says of a model, from its stored files (nothing is loaded).

        Raises:
            NotFound: no model by that name.
        """
        if not layout.NAME.fullmatch(name) or name not in self.names():
            raise NotFound(f"no model named {name!r}", code="model_not_found")
        held = self._holders.get(name)
        store = self.registry(name)
        if store is None:
            files = artifact.read_dir(self._settings.model_dir / name, (artifact.MANIFEST,))
            version, live = artifact.BUNDLED_VERSION, {}
        else:
            try:
                live = store.read_live()[0]
            except registry.AliasNotFound:
                live = {}
            version = live.get("version")
            files = store.read_version(version, (artifact.MANIFEST,)) if version else {}
        manifest = artifact.Manifest.from_json(files[artifact.MANIFEST]) if files else None
        return {
            "name": name,
            "default": name == self.default,
            "live_version": version,
            "previous_version": live.get("previous"),
            "updated_at": live.get("updated_at"),
            "classes": len(manifest.classes) if manifest else None,
            "quantization": manifest.quantization if manifest else None,
            "framing": manifest.framing if manifest else None,
            "metrics": manifest.metrics if manifest else {},
            "created_at": manifest.created_at if manifest else None,
            "trained_on": (manifest.source.get("trained_on") if manifest else None) or None,
            # Whether its answers carry an out-of-distribution score (the version has ood.npz).
            "ood": bool(manifest.ood) if manifest else False,
            "loaded": held is not None and held.live is not None,
            "problem": held.problem if held else None,
        }

    def problems(self) -> dict[str, str]:
        """The loaded models whose last load or refresh failed, and why."""
        return {name: held.problem for name, held in self._holders.items() if held.problem}

    def versions(self, name: str) -> list[dict[str, Any]]:
        """A model's published versions, oldest first, with their metrics (a bundled model: [])."""
        store = self.registry(name)
        if store is None:
            return []
        rows = []
        for version in store.list_versions():
            described = store.describe(version)
            manifest, metrics = described["manifest"], described["metrics"]
            rows.append(
                {
                    "version": version,
                    "live": described["live"],
                    "created_at": manifest.get("created_at"),
                    "quantization": manifest.get("quantization"),
                    "evaluation": metrics.get("evaluation") or manifest.get("metrics") or {},
                    "gate": metrics.get("gate"),
                    "job": metrics.get("job"),
                }
            )
        return rows
