"""The registry client: immutable numbered versions, a ``live`` alias moved by conditional writes.

Layout: ``imgclf.layout``; a version's files: ``imgclf.artifact``. Every file of a version is
created with ``If-None-Match: *`` and ``manifest.json`` goes last, so a publisher that dies half
way leaves no version (only an unlisted, numbered leftover) and nothing published is ever
overwritten. The alias is replaced with ``If-Match: <etag it was read with>``, so two publishers
can never interleave.

Serving imports this module (stdlib, boto3, numpy, LiteRT: never TensorFlow). The command line is
``python -m imgclf.registry`` (``imgclf/registry/__main__.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgclf import artifact, layout
from imgclf.artifact import InvalidModel, Manifest
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store, open_store

# How many rollback steps the alias remembers.
HISTORY_LENGTH = 10


class RegistryError(Exception):
    """Base class of the registry's errors."""


class AliasNotFound(RegistryError):
    """The alias has never been set."""


class VersionNotFound(RegistryError):
    """No published version by that name."""


class AliasConflict(RegistryError):
    """The alias moved since it was read; nothing was changed."""


def format_version(value: str | int) -> str:
    """Normalises ``7``, ``"7"`` or ``"0007"`` to the registry's ``"0007"``.

    Raises:
        VersionNotFound: not a positive integer.
    """
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise VersionNotFound(f"{value!r} is not a model version (a positive number)")
    return f"{int(text):04d}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Registry:
    """The versions and aliases of one model name in one store."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    @property
    def uri(self) -> str:
        return f"{self.store.uri}/{self.name}"

    def _version_key(self, version: str, file: str = "") -> str:
        return layout.version_key(self.name, version, file)

    def _alias_key(self, alias: str) -> str:
        return layout.alias_key(self.name, alias)

    def list_versions(self) -> list[str]:
        """Returns the published versions, oldest first."""
        prefix = layout.versions_prefix(self.name)
        return sorted(
            (
                key[len(prefix) :].split("/")[0]
                for key in self.store.list(prefix)
                if key.endswith(f"/{artifact.MANIFEST}")
            ),
            key=int,
        )

    def read_live(self, etag: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """Reads the ``live`` alias, conditionally.

        Args:
            etag: the ETag of the pointer the caller already has (a conditional GET).

        Returns:
            ``(pointer, etag)``, or ``(None, etag)`` when unchanged since ``etag``.

        Raises:
            AliasNotFound: no version has been made live yet.
        """
        try:
            obj = self.store.get(self._alias_key(layout.LIVE_ALIAS), if_none_match=etag)
        except ObjectNotFound as exc:
            raise AliasNotFound(f"{self.uri} has no {layout.LIVE_ALIAS!r} alias") from exc
        if obj is None:
            return None, etag
        return json.loads(obj.data), obj.etag

    def read_version(
        self,
        version: str,
        names: Sequence[str] = artifact.SERVING_FILES + artifact.OPTIONAL_FILES,
    ) -> dict[str, bytes]:
        """Downloads files of a published version (an optional file only where it has one).

        Args:
            version: e.g. ``"0007"`` (or ``"7"``).
            names: which files (default: what serving needs; ``artifact.MODEL_FILES`` for all).

        Returns:
            file name -> bytes.

        Raises:
            VersionNotFound: the version is not published.
        """
        version = format_version(version)
        files = {}
        manifest = artifact.MANIFEST
        for name in (manifest, *(n for n in names if n != manifest)):
            try:
                files[name] = self.store.get(self._version_key(version, name)).data
            except ObjectNotFound as exc:
                if name == manifest:
                    raise VersionNotFound(f"{self.uri} has no version {version}") from exc
                if name in artifact.OPTIONAL_FILES:
                    continue  # e.g. ood.npz: versions published before it existed have none
                raise InvalidModel(f"version {version} has no {name}") from exc
        return {n: files[n] for n in names if n in files}

    def describe(self, version: str) -> dict[str, Any]:
        """Returns a version's manifest and metrics, and whether it is live."""
        files = self.read_version(version, names=(artifact.MANIFEST, artifact.METRICS))
        try:
            live = self.read_live()[0]
        except AliasNotFound:
            live = {}
        version = format_version(version)
        return {
            "version": version,
            "live": live.get("version") == version,
            "manifest": Manifest.from_json(files[artifact.MANIFEST]).to_dict(),
            "metrics": json.loads(files[artifact.METRICS]),
        }

    def publish(self, model_dir: Path, images_dir: Path | None = None) -> str:
        """Validates a model directory and publishes it as the next version (not made live).

        Args:
            model_dir: holds ``artifact.SERVING_FILES`` and, for a model that can be retrained
                (warm-started), ``model.keras``; a pretrained model that is rebuilt from its
                package rather than retrained may go without it.
            images_dir: known images the model must predict on (see ``artifact.verify_dir``).

        Returns:
            The new version, e.g. ``"0008"``.

        Raises:
            InvalidModel: a file is missing or the model fails its checks.
        """
        files = artifact.read_dir(model_dir, artifact.MODEL_FILES + artifact.OPTIONAL_FILES)
        missing = [n for n in artifact.SERVING_FILES if n not in files]
        if missing:
            raise InvalidModel(f"{model_dir} lacks {', '.join(missing)}")
        artifact.verify_files(files)
        artifact.verify_in_subprocess(model_dir, images_dir)
        # Claim a number by creating its model.tflite; whoever loses the race takes the next one.
        prefix = layout.versions_prefix(self.name)
        taken = {key[len(prefix) :].split("/")[0] for key in self.store.list(prefix)}
        number = max((int(v) for v in taken if v.isdigit()), default=0) + 1
        while True:
            version = format_version(number)
            try:
                self.store.put(
                    self._version_key(version, artifact.MODEL),
                    files[artifact.MODEL],
                    if_none_match=True,
                )
                break
            except PreconditionFailed:
                number += 1
        # manifest.json last: its presence is what makes the version exist.
        rest = [n for n in files if n not in (artifact.MODEL, artifact.MANIFEST)]
        for name in [*rest, artifact.MANIFEST]:
            self.store.put(self._version_key(version, name), files[name], if_none_match=True)
        return version

    def promote(
        self, version: str, *, reason: str = "promote", expected_etag: str | None = None
    ) -> dict[str, Any]:
        """Moves ``live`` to a published version after checking its stored files.

        Args:
            version: the version to make live.
            reason: recorded in the pointer.
            expected_etag: only move if the alias still has this ETag (what a comparison was
                made against); default: the ETag read just now.

        Returns:
            The new pointer.

        Raises:
            VersionNotFound: no such version.
            InvalidModel: its stored files fail ``artifact.verify_files``.
            AliasConflict: the alias moved meanwhile; it was left as it is.
        """
        version = format_version(version)
        artifact.verify_files(self.read_version(version))
        try:
            current, etag = self.read_live()
        except AliasNotFound:
            current, etag = None, None
        if expected_etag is not None and expected_etag != etag:
            raise AliasConflict(f"{layout.LIVE_ALIAS} moved to {current and current['version']}")
        history = [] if current is None else [current["version"], *current.get("history", [])]
        history = [v for v in history if v != version][:HISTORY_LENGTH]
        return self._write_live(version, history, reason, etag)

    def rollback(self, *, reason: str = "rollback") -> dict[str, Any]:
        """Moves ``live`` back to the version that was live before it.

        Raises:
            AliasNotFound: nothing is live.
            RegistryError: there is no earlier version to go back to.
            AliasConflict: the alias moved meanwhile.
        """
        current, etag = self.read_live()
        history = current.get("history", [])
        if not history:
            raise RegistryError(
                f"{layout.LIVE_ALIAS} = {current['version']} has no previous version"
            )
        artifact.verify_files(self.read_version(history[0]))
        return self._write_live(history[0], history[1:], reason, etag)

    def _write_live(
        self, version: str, history: list[str], reason: str, etag: str | None
    ) -> dict[str, Any]:
        pointer = {
            "version": version,
            "previous": history[0] if history else None,
            "history": history,
            "updated_at": _now(),
            "reason": reason,
        }
        data = json.dumps(pointer, indent=2).encode()
        try:
            if etag is None:
                self.store.put(self._alias_key(layout.LIVE_ALIAS), data, if_none_match=True)
            else:
                self.store.put(self._alias_key(layout.LIVE_ALIAS), data, if_match=etag)
        except PreconditionFailed as exc:
            raise AliasConflict(
                f"{layout.LIVE_ALIAS} was moved by someone else; not changed"
            ) from exc
        return pointer


def list_models(store: Store) -> list[str]:
    """The model names a registry holds (its top-level folders that are valid names)."""
    return [name for name in store.list_folders("") if layout.NAME.fullmatch(name)]


def publish_bundled(store: Store, root: Path, reason: str) -> dict[str, str | None]:
    """Publishes each bundled model folder (``root/<name>/``) whose name has nothing live yet,
    and makes it live; a model already live is left alone (retraining publishes its next ones).

    Args:
        store: the registry's store.
        root: the bundled models, one folder each (``model/``).
        reason: recorded in each alias it sets.

    Returns:
        model name -> the version published, or None where one was live already.
    """
    published: dict[str, str | None] = {}
    for manifest in sorted(root.glob(f"*/{artifact.MANIFEST}")):
        registry = Registry(store, manifest.parent.name)
        try:
            registry.read_live()
            published[registry.name] = None
        except AliasNotFound:
            version = registry.publish(manifest.parent)
            registry.promote(version, reason=reason)
            published[registry.name] = version
    return published


def open_registry(uri: str, name: str) -> Registry:
    """Opens the registry at ``s3://bucket/prefix`` or a local folder path.

    Args:
        uri: where the registry lives (``MODEL_REGISTRY_URI``).
        name: the model name (``MODEL_NAME``).
    """
    return Registry(open_store(uri), name)
