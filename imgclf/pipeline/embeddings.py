"""Backbone features cached by image content, so that a warm start pays only for what is new.

A frozen backbone gives an image the same features every time: what it computed for an image
once, keyed by the sha256 of the image file's bytes, holds for as long as the backbone's weights,
the input resolution and the framing stay the same. ``cache_key`` names that combination; a cache
is one folder per key holding a few shards, ``<name>.npz`` files of two arrays each:

- ``sha256``: the images' digests (64 hex characters each), one per row;
- ``features``: float32, one row of the backbone's pooled features per digest.

A job downloads a model's shards from the data bucket (``embeddings/<model>/<key>/``, see
``imgclf.layout``) into a folder, ``python -m imgclf.pipeline.training --embedding-cache DIR``
reads them and writes one new shard with the features it had to compute, and the job uploads it;
so training never talks to S3, and the bucket holds a few objects rather than one per image.

Nothing here can break training: a shard that cannot be read, or whose arrays do not agree with
each other or with the backbone's feature width, is logged and ignored (its images are computed
again). Writes go to a temporary file renamed into place, and ``compact`` writes the merged shard
before it removes the ones it merged.

numpy and the standard library only: the retraining job uses it without TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgclf.preprocess import Framing

# Bumped when what a cached row means changes (the preprocessing, the features taken).
FORMAT_VERSION = 1
SHARD_SUFFIX = ".npz"
# A cache with more shards than this is merged into one (by the job, after it uploaded its own).
COMPACT_ABOVE = 8
DIGEST_LENGTH = 64  # sha256, hex

log = logging.getLogger(__name__)


def file_digest(data: bytes) -> str:
    """The sha256 (hex) of an image file's bytes: an image's identity in the cache."""
    return hashlib.sha256(data).hexdigest()


def weights_digest(weights: Sequence[np.ndarray]) -> str:
    """The sha256 (hex) of a model's weights as they are (shapes, dtypes and values, in order).

    For a backbone inside a saved model this is what its features depend on, whether it is the
    pretrained one untouched (``imgclf.pipeline.efficientnet_lite.weights_digest`` names the file
    it came from) or one a fine-tune changed.
    """
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cache_key(backbone_digest: str, resolution: int, framing: Framing) -> str:
    """The folder name of the cache of one backbone at one resolution and framing.

    For example ``v1-3f0c9a1b2d4e5f60-224-crop_0.875_bicubic``: safe as an S3 key part and a
    folder name.
    """
    return f"v{FORMAT_VERSION}-{backbone_digest[:16]}-{resolution}-{framing.name}"


def new_shard_name() -> str:
    """A shard's file name that sorts by creation time and that no other writer picks."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"


@dataclass(frozen=True)
class Lookup:
    """Which of the asked-for images the cache knows, and their features."""

    # One per image asked for: whether its features were in the cache.
    found: np.ndarray
    # The features of the images found, in the order asked (``len == found.sum()``).
    features: np.ndarray

    @property
    def hits(self) -> int:
        return int(self.found.sum())

    @property
    def misses(self) -> int:
        return int(len(self.found) - self.found.sum())


class EmbeddingCache:
    """The shards of one cache key in a local folder.

    Args:
        folder: the key's folder (created when a shard is first written).
        dim: the feature width; shards of another width are ignored. None: the first readable
            shard's width.
    """

    def __init__(self, folder: Path, dim: int | None = None) -> None:
        self.folder = folder
        self.dim = dim
        self._entries: dict[str, np.ndarray] | None = None
        # The shards read (readable ones only) and the ones ignored, with why.
        self.shards: list[Path] = []
        self.ignored: list[tuple[Path, str]] = []

    def shard_paths(self) -> list[Path]:
        """Every shard file in the folder, oldest first (by name)."""
        if not self.folder.is_dir():
            return []
        shards = self.folder.glob(f"*{SHARD_SUFFIX}")
        # A name starting with "." is a write in progress (or one a crash left half done).
        return sorted(p for p in shards if p.is_file() and not p.name.startswith("."))

    def read_shard(self, path: Path) -> tuple[list[str], np.ndarray] | None:
        """One shard's digests and features, or None (logged) when it cannot be used."""
        try:
            with np.load(path, allow_pickle=False) as content:
                digests = content["sha256"]
                features = content["features"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            return self._ignore(path, f"unreadable: {type(exc).__name__}: {exc}")
        if digests.ndim != 1 or digests.dtype.kind not in "US":
            return self._ignore(path, f"sha256 is {digests.dtype} {digests.shape}, not strings")
        if features.ndim != 2 or features.shape[0] != digests.shape[0]:
            return self._ignore(
                path, f"features {features.shape} do not match {digests.shape[0]} digests"
            )
        if features.dtype.kind != "f":
            return self._ignore(path, f"features are {features.dtype}, not floats")
        if self.dim is not None and features.shape[1] != self.dim:
            return self._ignore(path, f"features are {features.shape[1]}-d, not {self.dim}-d")
        names = [d.decode() if isinstance(d, bytes) else str(d) for d in digests.tolist()]
        return names, features.astype(np.float32, copy=False)

    def _ignore(self, path: Path, reason: str) -> None:
        """Logs and remembers why a shard is not used (its images will be computed again)."""
        log.warning("embedding cache: ignoring shard %s: %s", path, reason)
        self.ignored.append((path, reason))
        return None

    def entries(self) -> dict[str, np.ndarray]:
        """Digest -> features of every usable row of every usable shard (read once).

        A row whose digest is not 64 hex characters or whose features are not all finite is
        left out; a digest in several shards keeps its first (oldest) row.
        """
        if self._entries is not None:
            return self._entries
        entries: dict[str, np.ndarray] = {}
        self.shards, self.ignored = [], []
        for path in self.shard_paths():
            shard = self.read_shard(path)
            if shard is None:
                continue
            digests, features = shard
            if self.dim is None:
                self.dim = features.shape[1]
            finite = np.isfinite(features).all(axis=1)
            for digest, row, ok in zip(digests, features, finite, strict=True):
                if ok and len(digest) == DIGEST_LENGTH and digest not in entries:
                    entries[digest] = row
            self.shards.append(path)
        self._entries = entries
        return entries

    def lookup(self, digests: Sequence[str]) -> Lookup:
        """The cached features of ``digests`` (those the cache has).

        Returns:
            Which were found, and their features in the order asked.
        """
        entries = self.entries()
        found = np.array([d in entries for d in digests], dtype=bool)
        rows = [entries[d] for d in digests if d in entries]
        width = self.dim or 0
        features = np.stack(rows) if rows else np.zeros((0, width), np.float32)
        return Lookup(found, features)

    def add(self, digests: Sequence[str], features: np.ndarray) -> Path | None:
        """Writes the rows the cache does not have yet as one new shard.

        Args:
            digests: the images' sha256s (repeats are written once).
            features: one float row per digest.

        Returns:
            The new shard, or None when every row was cached already.

        Raises:
            ValueError: the features do not have one row per digest, or the cache's width.
        """
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != len(digests):
            raise ValueError(f"{features.shape} features for {len(digests)} digests")
        if self.dim is not None and features.shape[1] != self.dim:
            raise ValueError(f"{features.shape[1]}-d features in a {self.dim}-d cache")
        entries = self.entries()
        new: dict[str, np.ndarray] = {}
        for digest, row in zip(digests, features, strict=True):
            if digest not in entries and digest not in new:
                new[digest] = row
        if not new:
            return None
        path = self._write(new.keys(), np.stack(list(new.values())))
        entries.update(new)
        self.shards.append(path)
        self.dim = features.shape[1]
        return path

    def _write(self, digests: Iterable[str], features: np.ndarray) -> Path:
        """Writes a shard atomically (a temporary file renamed into place)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / new_shard_name()
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=SHARD_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle,
                    sha256=np.array(list(digests), dtype=f"U{DIGEST_LENGTH}"),
                    features=features.astype(np.float32, copy=False),
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def compact(self, above: int = COMPACT_ABOVE) -> tuple[Path, list[Path]] | None:
        """Merges the usable shards into one when there are more than ``above``.

        The merged shard is written before the shards it replaces are removed, so every row is
        somewhere at every moment; shards that cannot be read are left where they are.

        Returns:
            ``(merged shard, shards removed)``, or None when there was nothing to do.
        """
        entries = self.entries()
        merged = list(self.shards)
        if len(merged) <= above:
            return None
        rows = list(entries.values())
        features = np.stack(rows) if rows else np.zeros((0, self.dim or 0), np.float32)
        path = self._write(entries.keys(), features)
        for old in merged:
            old.unlink(missing_ok=True)
        self.shards = [path]
        return path, merged
