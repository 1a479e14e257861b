"""One small object-store interface: S3 (any endpoint boto3 is pointed at) or a local folder.

The model registry and the retrain pipeline only need get / put / delete / list, plus the two
conditional requests that make concurrent writers safe: ``If-None-Match: *`` (create only if
absent) and ``If-Match: <etag>`` (replace or delete only what was read). S3 honours both on
PutObject and DeleteObject, and ``If-None-Match: <etag>`` on GetObject answers 304 when unchanged.
The local store gives the same guarantees between processes on one machine with ``flock``.

Serving-safe: stdlib and boto3 only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


class StorageError(Exception):
    """Base class of the store's own errors."""


class ObjectNotFound(StorageError, KeyError):
    """The key does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the key exists (If-None-Match) or changed (If-Match)."""


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes with its ETag (quoted, as S3 sends it)."""

    data: bytes
    etag: str


class Store(Protocol):
    """The operations the registry and the retrain pipeline use. Keys use ``/`` separators."""

    uri: str

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        """Returns the object, or None when ``if_none_match`` is its current ETag (unchanged).

        Raises:
            ObjectNotFound: there is no such key.
        """
        ...

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Writes the object and returns its new ETag.

        Args:
            key: the object key.
            data: the bytes to store.
            if_match: only replace the object if its ETag is this one.
            if_none_match: only create the object if the key does not exist.

        Raises:
            PreconditionFailed: the condition did not hold; nothing was written.
        """
        ...

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Deletes the object (a missing key is not an error unless ``if_match`` is given).

        Raises:
            PreconditionFailed: ``if_match`` is not the object's ETag; nothing was deleted.
        """
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Yields every key under ``prefix``, in lexicographic order."""
        ...

    def list_folders(self, prefix: str) -> list[str]:
        """Returns the names of the immediate sub-folders of ``prefix`` (which ends in ``/``)."""
        ...


def open_store(uri: str) -> Store:
    """Opens ``s3://bucket[/prefix]`` or a local folder path (created if missing).

    Args:
        uri: where the objects live. A bare path (or ``file://`` path) is a local folder.

    Returns:
        The store; keys are relative to the prefix or folder.
    """
    if not uri.strip():
        raise ValueError("no store location given (an s3:// URI or a folder path)")
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        return S3Store(bucket, prefix)
    return LocalStore(Path(uri.removeprefix("file://")))


def _etag(data: bytes) -> str:
    # The ETag S3 gives an object written in one PUT without KMS: the quoted MD5 of its bytes.
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def _same_etag(a: str, b: str) -> bool:
    return a.strip('"') == b.strip('"')


class S3Store:
    """A bucket (and optional key prefix) through boto3, which honours ``AWS_ENDPOINT_URL``."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (so that opening a store needs no AWS settings)."""
        if self._client is None:
            # A pool as large as the training job's download threads, so none waits for a socket.
            config = Config(
                retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=16
            )
            self._client = boto3.client("s3", config=config)
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if if_none_match:
            kwargs["IfNoneMatch"] = if_none_match
        try:
            response = self.client.get_object(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {}).get("Code", "")
            if error in ("304", "NotModified"):
                return None
            if error in ("NoSuchKey", "404"):
                raise ObjectNotFound(key) from exc
            raise
        return StoredObject(data=response["Body"].read(), etag=response["ETag"])

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_match:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            return self.client.put_object(**kwargs)["ETag"]
        except ClientError as exc:
            # 409 ConditionalRequestConflict: a concurrent conditional write to the same key won.
            if exc.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "NoSuchKey",  # If-Match on a key that does not exist
            ):
                raise PreconditionFailed(f"{key}: {exc}") from exc
            raise

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            self.client.delete_object(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "NoSuchKey"):
                raise PreconditionFailed(f"{key}: {exc}") from exc
            raise

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]

    def list_folders(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        names = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
            names += [p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)


class LocalStore:
    """A folder on disk with the same conditional semantics as S3 (between local processes).

    Writes go to a temporary file and are renamed into place, so a reader never sees half an
    object; conditional writes hold an exclusive ``flock`` on ``<root>/.lock`` while they compare.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
            raise ValueError(f"invalid key {key!r}")
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _current_etag(self, path: Path) -> str | None:
        try:
            return _etag(path.read_bytes())
        except FileNotFoundError:
            return None

    def get(self, key: str, *, if_none_match: str | None = None) -> StoredObject | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        etag = _etag(data)
        if if_none_match and _same_etag(if_none_match, etag):
            return None
        return StoredObject(data=data, etag=etag)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        path = self._path(key)
        if not (if_match or if_none_match):
            self._write(path, data)
            return _etag(data)
        with self._locked():
            current = self._current_etag(path)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key} exists")
            if if_match and (current is None or not _same_etag(if_match, current)):
                raise PreconditionFailed(f"{key} changed")
            self._write(path, data)
        return _etag(data)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        if not if_match:
            path.unlink(missing_ok=True)
            return
        with self._locked():
            current = self._current_etag(path)
            if current is None or not _same_etag(if_match, current):
                raise PreconditionFailed(f"{key} changed")
            path.unlink()

    def list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest folder the prefix names, then filter on the rest of it.
        folder, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*PurePosixPath(folder).parts) if folder else self.root
        if not start.is_dir():
            return
        keys = (
            p.relative_to(self.root).as_posix()
            for p in start.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        yield from sorted(k for k in keys if k.startswith(prefix))

    def list_folders(self, prefix: str) -> list[str]:
        folder = self.root / prefix if prefix else self.root
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir())
