"""The lock that lets one training job per model run at a time: ``jobs/locks/<model>.json``.

``{"job_id", "renewed_at", "expires_at"}``: taken with If-None-Match, renewed and released with
If-Match; an expired lock is taken over with If-Match on the expired copy, so a crashed job blocks
others for at most RETRAIN_LOCK_TTL_SECONDS.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass

from imgclf import layout
from imgclf.retrain.records import iso, now
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store


class LockLost(Exception):
    """The job no longer holds the lock (it expired and another job took it)."""


@dataclass
class Lock:
    """The job lock as its holder knows it: whose it is and the ETag of the copy it wrote."""

    store: Store
    model: str
    job_id: str
    etag: str
    ttl: float
    # The job whose expired lock this one replaced (it stopped renewing it: it crashed).
    took_over_from: str | None = None

    @property
    def key(self) -> str:
        return layout.lock_key(self.model)

    def body(self) -> bytes:
        """The lock object's content: holder and expiry, from now."""
        t = now()
        return json.dumps(
            {"job_id": self.job_id, "renewed_at": iso(t), "expires_at": t + self.ttl}
        ).encode()

    def renew(self) -> None:
        """Pushes the expiry ``ttl`` seconds ahead.

        Raises:
            LockLost: the lock is no longer ours.
        """
        try:
            self.etag = self.store.put(self.key, self.body(), if_match=self.etag)
        except PreconditionFailed as exc:
            raise LockLost(f"job {self.job_id} lost the lock") from exc

    def release(self) -> None:
        """Deletes the lock if it is still ours (if not, there is nothing to release)."""
        with contextlib.suppress(PreconditionFailed):
            self.store.delete(self.key, if_match=self.etag)


def lock_holder(store: Store, model: str) -> str | None:
    """The job id a model's lock names now (expired or not), or None when it is free."""
    try:
        return json.loads(store.get(layout.lock_key(model)).data).get("job_id")
    except ObjectNotFound:
        return None


def acquire_lock(store: Store, model: str, job_id: str, ttl: float) -> Lock | None:
    """Takes a model's job lock for ``job_id``: free, or held by a job whose lock expired.

    Returns:
        The lock, or None when another job holds it.
    """
    lock = Lock(store, model, job_id, "", ttl)
    for _ in range(3):
        try:
            lock.etag = store.put(lock.key, lock.body(), if_none_match=True)
            return lock
        except PreconditionFailed:
            pass
        try:
            current = store.get(lock.key)
        except ObjectNotFound:
            continue  # released between our two requests: try again
        holder = json.loads(current.data)
        if holder.get("expires_at", 0) > now():
            return None
        try:
            # Only replaces the expired copy we read: of two jobs taking over, one wins.
            lock.etag = store.put(lock.key, lock.body(), if_match=current.etag)
            lock.took_over_from = holder.get("job_id")
            return lock
        except PreconditionFailed:
            return None
    return None


def resume_lock(store: Store, model: str, job_id: str, ttl: float) -> Lock:
    """Returns the lock taken for ``job_id`` by whoever launched it, as the job's own.

    Raises:
        LockLost: the lock is free or held for another job.
    """
    try:
        current = store.get(layout.lock_key(model))
    except ObjectNotFound as exc:
        raise LockLost(f"no lock is held for job {job_id}") from exc
    if json.loads(current.data).get("job_id") != job_id:
        raise LockLost(f"the lock is held for another job than {job_id}")
    lock = Lock(store, model, job_id, current.etag, ttl)
    lock.renew()
    return lock


class Heartbeat:
    """Renews a lock every third of its TTL from a thread, and remembers if it was lost."""

    def __init__(self, lock: Lock) -> None:
        self.lock = lock
        self.lost: LockLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lock.ttl / 3):
            try:
                self.lock.renew()
            except LockLost as exc:
                self.lost = exc
                return
            except Exception:  # noqa: BLE001 - a transient S3 error: try again next beat
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Renews now; raises ``LockLost`` if the lock is no longer ours."""
        if self.lost is not None:
            raise self.lost
        self.lock.renew()
