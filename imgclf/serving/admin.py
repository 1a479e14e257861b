"""The registry as the web console sees it: a version's evaluation, and the live alias moved by
an admin.

``GET /models/{name}/versions/{version}`` reads what ``train.py`` or the retrain job wrote in the
version's ``metrics.json`` (accuracy, macro F1, per class figures, the confusion matrix, the data it
was trained on, the job and its quality gate). ``POST /models/{name}/promote {"version"}`` and
``POST /models/{name}/rollback`` call ``imgclf.registry.Registry`` (which re-checks the stored
files and moves the alias with ``If-Match``); both need an admin token
(``imgclf.serving.auth``). Serving environments follow the alias within MODEL_REFRESH_SECONDS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from imgclf import artifact, layout, registry
from imgclf.artifact import InvalidModel
from imgclf.errors import BadRequest, NotFound
from imgclf.serving.auth import Conflict, require_admin
from imgclf.serving.http import Request, json_body
from imgclf.serving.model_holder import ModelCatalog
from imgclf.settings import ServeSettings

EVALUATION_FIELDS = ("accuracy", "macro_f1", "per_class", "confusion_matrix", "count")


def evaluation_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """A version's test evaluation, whoever wrote it: the retrain job's ``evaluation`` (on the
    data bucket's test split) or ``train.py``'s own figures (top level of ``metrics.json``)."""
    source = metrics.get("evaluation") or metrics
    evaluation = {name: source.get(name) for name in EVALUATION_FIELDS}
    # The confusion matrix's rows and columns are these classes, in this order.
    evaluation["classes"] = source.get("classes") or list(source.get("per_class") or {})
    return evaluation


def data_of(metrics: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Images per class in each split the version was trained and tested on."""
    job = metrics.get("job") or {}
    counts = job.get("data") or metrics.get("data") or {}
    return {
        split.removeprefix("seg_"): per_class
        for split, per_class in counts.items()
        if isinstance(per_class, dict)
    }


@dataclass(frozen=True)
class RegistryService:
    """Routes over the registry of each model the catalog serves."""

    settings: ServeSettings
    models: ModelCatalog

    def _check_name(self, name: str) -> None:
        if not layout.NAME.fullmatch(name) or name not in self.models.names():
            raise NotFound(f"no model named {name!r}", code="model_not_found")

    def _registry(self, name: str) -> registry.Registry:
        self._check_name(name)
        found = self.models.registry(name)
        if found is None:
            raise Conflict(
                "this function serves its bundled models: there is no registry to change",
                code="no_registry",
            )
        return found

    def version_detail(self, request: Request) -> dict[str, Any]:
        """``GET /models/{name}/versions/{version}``: one version's evaluation and provenance."""
        name, version = request.path_params["name"], request.path_params["version"]
        self._check_name(name)
        if self.models.registry(name) is None:
            if version != artifact.BUNDLED_VERSION:
                raise NotFound(
                    f"{name} is served from its bundled files: its one version is "
                    f"{artifact.BUNDLED_VERSION!r}",
                    code="version_not_found",
                )
            folder = self.settings.model_dir / name
            files = artifact.read_dir(folder, (artifact.MANIFEST, artifact.METRICS))
            manifest = artifact.Manifest.from_json(files[artifact.MANIFEST]).to_dict()
            metrics = json.loads(files.get(artifact.METRICS, b"{}"))
            live = True
        else:
            try:
                described = self._registry(name).describe(version)
            except registry.VersionNotFound as exc:
                raise NotFound(str(exc), code="version_not_found") from exc
            version, live = described["version"], described["live"]
            manifest, metrics = described["manifest"], described["metrics"]
        return {
            "name": name,
            "version": version,
            "live": live,
            "created_at": manifest.get("created_at"),
            "quantization": manifest.get("quantization"),
            "labels": manifest.get("classes", []),
            "evaluation": evaluation_of(metrics),
            "data": data_of(metrics),
            "job": metrics.get("job"),
            "gate": metrics.get("gate"),
        }

    def promote(self, request: Request) -> dict[str, Any]:
        """``POST /models/{name}/promote {"version": "0002"}`` (admin): makes a version live."""
        claims = require_admin(request.authorizer, self.settings.admin_scope)
        version = json_body(request).get("version")
        if isinstance(version, bool) or not isinstance(version, str | int):
            raise BadRequest('name the version to promote: {"version": "0002"}')
        found = self._registry(request.path_params["name"])
        who = claims.get("sub") or "an admin"
        try:
            pointer = found.promote(str(version), reason=f"promoted by {who} (web console)")
        except registry.VersionNotFound as exc:
            raise NotFound(str(exc), code="version_not_found") from exc
        except registry.AliasConflict as exc:
            raise Conflict(str(exc), code="alias_conflict") from exc
        except InvalidModel as exc:
            raise Conflict(
                f"version {version} fails its checks: {exc}", code="invalid_model"
            ) from exc
        return {"name": found.name, "live": pointer}

    def rollback(self, request: Request) -> dict[str, Any]:
        """``POST /models/{name}/rollback`` (admin): back to the version live before."""
        claims = require_admin(request.authorizer, self.settings.admin_scope)
        found = self._registry(request.path_params["name"])
        who = claims.get("sub") or "an admin"
        try:
            pointer = found.rollback(reason=f"rolled back by {who} (web console)")
        except registry.AliasNotFound as exc:
            raise Conflict(str(exc), code="nothing_live") from exc
        except registry.AliasConflict as exc:
            raise Conflict(str(exc), code="alias_conflict") from exc
        except InvalidModel as exc:
            raise Conflict(
                f"the previous version fails its checks: {exc}", code="invalid_model"
            ) from exc
        except registry.RegistryError as exc:
            raise Conflict(str(exc), code="no_previous_version") from exc
        return {"name": found.name, "live": pointer}
