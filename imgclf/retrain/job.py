"""The training job every backend runs: ``python -m imgclf.retrain.job --job-id ID``.

1. snapshot: the listed ``train/`` and ``test/`` objects, laid out as ``seg_train/<class>/`` and
   ``seg_test/<class>/`` (SageMaker mounts them as channels instead), and for a warm start the
   model's cached backbone features (``embeddings/<model>/``, ``imgclf.pipeline.embeddings``);
2. train: ``imgclf.pipeline.training`` warm-started from the live model's Keras file, or a full
   search, in a subprocess (its crash is not the job's); a warm start computes features only for
   the images the cache does not know, and the job uploads the shard it adds (merging a key's
   shards into one when there are more than ``COMPACT_ABOVE``);
3. convert: ``imgclf.pipeline.conversion`` with its parity check (a failed check ends the job,
   nothing is published);
4. evaluate the new and the live TFLite model on the same fixed test split;
5. gate: the new model passes unless it is worse than live by more than RETRAIN_QUALITY_TOLERANCE
   in accuracy or macro F1;
6. publish version N+1 (with the evaluation and the gate decision in its ``metrics.json``), and move
   ``live`` to it only if the gate passed and ``live`` did not move meanwhile.

The job holds the lock its launcher took (renewed from a thread) and checks it before it publishes;
however it ends, it writes its status to ``jobs/<id>.json`` (with the seconds each stage took,
``stages``) and releases the lock. The embedding cache only ever saves time: a shard that cannot
be downloaded, read or uploaded is logged, and its images are computed again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import artifact, layout
from imgclf.layout import PENDING, TEST, TRAIN
from imgclf.pipeline import ExitCode
from imgclf.pipeline.data import class_names, load_split
from imgclf.pipeline.embeddings import COMPACT_ABOVE, SHARD_SUFFIX, EmbeddingCache
from imgclf.pipeline.evaluation import classification_metrics
from imgclf.registry import AliasConflict, AliasNotFound, Registry, open_registry
from imgclf.retrain.launch import LockHeld, count_pending, start_job
from imgclf.retrain.lock import Heartbeat, LockLost, resume_lock
from imgclf.retrain.records import JobRecord, JobStatus, iso, now, read_job, write_job
from imgclf.runtime import TFLiteModel
from imgclf.settings import PROJECT_ROOT, RetrainSettings
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store

GATE_METRICS = ("accuracy", "macro_f1")
# A job's scratch folder in the temporary directory: the pid of the process that owns it, so the
# next job can remove what a killed one left behind.
WORKDIR_PREFIX = "imgclf-job-"
# Time kept back from a deadline (the lambda backend) to record the outcome and release the lock.
DEADLINE_MARGIN_SECONDS = 30.0
DOWNLOAD_THREADS = 16
# A cache key or shard name as the job writes them; anything else under embeddings/ is left alone.
CACHE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_workdirs(root: Path | None = None) -> list[Path]:
    """Deletes the scratch folders of jobs whose process is gone (killed, or its host reused).

    Args:
        root: the temporary directory (default: ``tempfile.gettempdir()``).

    Returns:
        The folders removed.
    """
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = folder.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class JobFailed(Exception):
    """The job cannot go on; the message is recorded as the job's error."""


def _download(store: Store, prefix: str, target: Path) -> dict[str, int]:
    """Copies every ``<prefix><class>/<file>`` object to ``target/<class>/<file>``."""
    keys = [k for k in store.list(prefix) if k[len(prefix) :].count("/") == 1]

    def fetch(key: str) -> None:
        path = target.joinpath(*key[len(prefix) :].split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.get(key).data)

    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        list(pool.map(fetch, keys))
    return {c: len(list((target / c).iterdir())) for c in class_names(target)} if keys else {}


def snapshot(
    store: Store, model: str, data: Path, channels: Path | None
) -> dict[str, dict[str, int]]:
    """Lays a model's training data out in the Intel layout under ``data``.

    Args:
        store: the data bucket.
        model: whose data (``train/<model>/``, ``test/<model>/``).
        data: the dataset root to create (``seg_train/``, ``seg_test/``).
        channels: SageMaker's channel folder (``train/``, ``test/``) to use instead of S3.

    Returns:
        Images per class, per split.
    """
    data.mkdir(parents=True)
    if channels is not None:
        (data / "seg_train").symlink_to(channels / "train", target_is_directory=True)
        (data / "seg_test").symlink_to(channels / "test", target_is_directory=True)
        return {
            split: {c: len(list((data / split / c).iterdir())) for c in class_names(data / split)}
            for split in ("seg_train", "seg_test")
        }
    return {
        "seg_train": _download(store, layout.model_prefix(TRAIN, model), data / "seg_train"),
        "seg_test": _download(store, layout.model_prefix(TEST, model), data / "seg_test"),
    }


def _shard_keys(store: Store, model: str) -> list[str]:
    """The model's shards as ``<cache key>/<shard>.npz``, relative to its embeddings prefix."""
    prefix = layout.embeddings_prefix(model)
    names = [key[len(prefix) :] for key in store.list(prefix)]
    return [n for n in names if n.endswith(SHARD_SUFFIX) and _cache_name(n)]


def _cache_name(name: str) -> bool:
    """Whether ``name`` is ``<cache key>/<shard>``, both safe as folder and file names."""
    parts = name.split("/")
    return len(parts) == 2 and all(CACHE_PART.fullmatch(p) for p in parts)


def download_embeddings(store: Store, model: str, folder: Path) -> list[str]:
    """Copies a model's cached embedding shards into ``folder/<cache key>/<shard>.npz``.

    Every key's shards are copied (training reads the one of its backbone and framing). A shard
    deleted meanwhile is skipped.

    Returns:
        The shards copied, as ``<cache key>/<shard>.npz``.
    """
    prefix = layout.embeddings_prefix(model)
    folder.mkdir(parents=True, exist_ok=True)

    def fetch(name: str) -> str | None:
        try:
            data = store.get(prefix + name).data
        except ObjectNotFound:
            return None
        path = folder.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return name

    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        return [n for n in pool.map(fetch, _shard_keys(store, model)) if n is not None]


def upload_embeddings(
    store: Store, model: str, folder: Path, downloaded: Sequence[str], above: int = COMPACT_ABOVE
) -> dict[str, Any]:
    """Uploads the shards training added to ``folder``, then merges any key's shards into one
    when it has more than ``above``.

    The merged shard is uploaded before the shards it replaces are deleted, so the bucket holds
    every row at every moment; shards that cannot be read are neither merged nor deleted.

    Args:
        store: the data bucket.
        model: whose cache (``embeddings/<model>/``).
        folder: what ``download_embeddings`` copied, plus what training wrote.
        downloaded: the shards ``download_embeddings`` copied (the others are new).
        above: merge a key's shards when there are more than this.

    Returns:
        ``{"shards_uploaded": [...], "compacted": {key: {"merged", "removed"}}}``.
    """
    prefix = layout.embeddings_prefix(model)
    known = set(downloaded)
    uploaded = []
    for path in sorted(folder.glob(f"*/*{SHARD_SUFFIX}")):
        name = f"{path.parent.name}/{path.name}"
        if name in known or not _cache_name(name):
            continue
        # Names are unique: one that is there already is this very shard.
        with contextlib.suppress(PreconditionFailed):
            store.put(prefix + name, path.read_bytes(), if_none_match=True)
        uploaded.append(name)
    compacted = {}
    for key_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        merge = EmbeddingCache(key_dir).compact(above)
        if merge is None:
            continue
        merged, removed = merge
        store.put(f"{prefix}{key_dir.name}/{merged.name}", merged.read_bytes(), if_none_match=True)
        for old in removed:
            store.delete(f"{prefix}{key_dir.name}/{old.name}")
        compacted[key_dir.name] = {"merged": merged.name, "removed": len(removed)}
    return {"shards_uploaded": uploaded, "compacted": compacted}


def evaluate_tflite(model_dir: Path, test_dir: Path) -> dict[str, Any]:
    """Evaluates a TFLite model directory on a folder-per-class test split.

    The test split's own classes are the truth; a model that predicts a class the split does not
    have is simply wrong there, so models with different class lists compare on the same images.

    Returns:
        ``imgclf.pipeline.evaluation.classification_metrics`` over the split's classes.
    """
    labels = json.loads((model_dir / artifact.LABELS).read_text())
    model = TFLiteModel((model_dir / artifact.MODEL).read_bytes())
    classes = class_names(test_dir)
    test = load_split(test_dir, model.height, model.width, classes=classes)
    index = {name: i for i, name in enumerate(classes)}
    predicted = np.array(
        [index.get(labels[int(np.argmax(model.predict(x)))], -1) for x in test.x], dtype=np.int64
    )
    return classification_metrics(test.y, predicted, classes)


def quality_gate(
    new: dict[str, Any], live: dict[str, Any] | None, tolerance: float
) -> dict[str, Any]:
    """Decides whether the new model may replace the live one.

    Returns:
        ``{"passed", "reason", "tolerance", "deltas"}`` (deltas: new minus live, per metric).
    """
    if live is None:
        return {"passed": True, "reason": "no live model to compare with", "tolerance": tolerance}
    deltas = {m: round(float(new[m]) - float(live[m]), 6) for m in GATE_METRICS}
    worse = [
        f"{m} {new[m]:.4f} < live {live[m]:.4f} - {tolerance}"
        for m, d in deltas.items()
        if d < -tolerance
    ]
    return {
        "passed": not worse,
        "reason": "; ".join(worse) or f"not worse than live by more than {tolerance}",
        "tolerance": tolerance,
        "deltas": deltas,
    }


class Job:
    """One run of the pipeline, with the bookkeeping every stage shares."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: RetrainSettings,
        record: JobRecord,
        heartbeat: Heartbeat,
        deadline: float | None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.record = record
        self.heartbeat = heartbeat
        self.deadline = deadline
        self._stage_started: float | None = None

    def stage(self, name: str, **details: Any) -> None:
        """Records that the job entered a stage (and anything learnt so far), and the seconds
        the previous one took."""
        log.info("job %s: %s", self.record.id, name)
        stages = self.end_stage()
        self.record = write_job(self.store, self.record, stage=name, stages=stages, **details)
        self._stage_started = time.monotonic()

    def end_stage(self) -> dict[str, float]:
        """The seconds of every stage so far, the current one ended now (``JobRecord.stages``)."""
        stages = dict(self.record.stages)
        if self.record.stage is not None and self._stage_started is not None:
            stages[self.record.stage] = round(time.monotonic() - self._stage_started, 2)
            self._stage_started = None
        return stages

    def remaining(self) -> float | None:
        """Seconds left for a subprocess, or None without a deadline.

        Raises:
            JobFailed: the deadline is too close to start anything.
        """
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic() - DEADLINE_MARGIN_SECONDS
        if left <= 0:
            raise JobFailed(f"out of time before stage {self.record.stage}")
        return left

    def run_stage(self, module: str, args: Sequence[str | Path]) -> None:
        """Runs a pipeline module (``python -m``) in a subprocess: its crash is not the job's.

        Raises:
            JobFailed: it failed or ran out of time.
        """
        cmd = [sys.executable, "-m", module, *map(str, args)]
        log.info("running %s", " ".join(cmd))
        try:
            code = subprocess.run(
                cmd, cwd=PROJECT_ROOT, timeout=self.remaining(), check=False
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise JobFailed(f"{module} ran out of time") from exc
        if code != ExitCode.OK:
            known = {c.value: c for c in ExitCode}
            reason = f" ({known[code].describe()})" if code in known else ""
            raise JobFailed(f"{module} exited with code {code}{reason}")

    def live_model(self, work: Path, channels: Path | None) -> tuple[Path | None, str | None]:
        """Fetches the live version's files (or finds them mounted) into ``work/live``.

        Returns:
            ``(folder, alias ETag)``; ``(None, None)`` when nothing is live yet.
        """
        try:
            pointer, etag = self.registry.read_live()
        except AliasNotFound:
            return None, None
        version = pointer["version"]
        mounted = channels / "live" if channels is not None else None
        folder = work / "live"
        if mounted is not None and version == self.record.live_version and mounted.is_dir():
            shutil.copytree(mounted, folder)
        else:
            folder.mkdir()
            files = self.registry.read_version(version, names=artifact.MODEL_FILES)
            for name, content in files.items():
                (folder / name).write_bytes(content)
        artifact.verify_files(artifact.read_dir(folder, artifact.MODEL_FILES))
        self.record = self.record.replace(compared_with=version)
        return folder, etag

    def fetch_embeddings(self, folder: Path) -> list[str] | None:
        """Downloads the model's embedding cache into ``folder`` (see ``download_embeddings``).

        Returns:
            The shards downloaded, or None when the cache could not be read (the job goes on
            without it: training computes every image's features).
        """
        started = time.monotonic()
        try:
            shards = download_embeddings(self.store, self.record.model, folder)
        except Exception as exc:  # noqa: BLE001 - a cache saves time; it must never fail the job
            log.warning("job %s: embedding cache not read: %s", self.record.id, exc)
            self.record = self.record.replace(embedding_cache={"error": f"download: {exc}"})
            return None
        seconds = round(time.monotonic() - started, 2)
        log.info("job %s: %d embedding shards in %.1f s", self.record.id, len(shards), seconds)
        self.record = self.record.replace(
            embedding_cache={"shards_downloaded": len(shards), "download_seconds": seconds}
        )
        return shards

    def store_embeddings(self, folder: Path, downloaded: list[str], trained: Path) -> None:
        """Uploads the shard training added (merging shards when many) and records what the
        cache gave training (``trained``'s ``metrics.json``)."""
        recorded = dict(self.record.embedding_cache)
        metrics_path = trained / artifact.METRICS
        if metrics_path.is_file():
            recorded.update(json.loads(metrics_path.read_text()).get("embedding_cache") or {})
        started = time.monotonic()
        try:
            recorded.update(upload_embeddings(self.store, self.record.model, folder, downloaded))
        except Exception as exc:  # noqa: BLE001 - the new model does not depend on the cache
            log.warning("job %s: embedding cache not stored: %s", self.record.id, exc)
            recorded["error"] = f"upload: {exc}"
        recorded["upload_seconds"] = round(time.monotonic() - started, 2)
        self.record = self.record.replace(embedding_cache=recorded)

    def train(
        self, data: Path, live_dir: Path | None, out: Path, cache: tuple[Path, list[str]] | None
    ) -> None:
        """Trains (warm-started unless a full run was asked for) and converts into ``out``.

        ``cache``: the embedding cache's folder and the shards downloaded into it, for a warm
        start; the shard training adds is uploaded before conversion.
        """
        warm = self.record.mode == "warm" and live_dir is not None
        warm_start = ["--warm-start", live_dir / artifact.KERAS] if warm else []
        if warm and cache is not None:
            warm_start += ["--embedding-cache", cache[0]]
        self.stage("train", warm_start=warm)
        keras_out = out.with_name("train")
        train_args = ["--data", data, "--out", keras_out, *self.settings.train_args, *warm_start]
        self.run_stage("imgclf.pipeline.training", train_args)
        if warm and cache is not None:
            self.store_embeddings(*cache, keras_out)
        self.stage("convert")
        paths = ["--model-dir", keras_out, "--data", data, "--out", out]
        options = ["--quantization", self.settings.quantization, "--name", self.record.model]
        self.run_stage("imgclf.pipeline.conversion", [*paths, *options])

    def evaluate(self, model_dir: Path, live_dir: Path | None, test_dir: Path) -> dict[str, Any]:
        """Evaluates both models on the test split, applies the gate, records both in metrics.json.

        Returns:
            The gate's decision.
        """
        self.stage("evaluate")
        new = evaluate_tflite(model_dir, test_dir)
        live = None
        if live_dir is not None:
            live = {"version": self.record.compared_with, **evaluate_tflite(live_dir, test_dir)}
        gate = quality_gate(new, live, self.settings.quality_tolerance)
        metrics_path = model_dir / artifact.METRICS
        metrics = json.loads(metrics_path.read_text())
        r = self.record
        job = {"id": r.id, "mode": r.mode, "reason": r.reason, "data": r.data}
        metrics.update(evaluation=new, live_evaluation=live, gate=gate, job=job)
        metrics_path.write_text(json.dumps(metrics, indent=2, default=float))
        self.record = r.replace(evaluation={m: new[m] for m in GATE_METRICS}, gate=gate)
        return gate

    def publish(
        self, model_dir: Path, test_dir: Path, gate: dict[str, Any], etag: str | None
    ) -> None:
        """Publishes the next version; makes it live if the gate passed and live did not move."""
        self.stage("publish")
        self.heartbeat.check()
        version = self.registry.publish(model_dir, images_dir=test_dir)
        self.record = self.record.replace(
            version=version, promoted=False, note=f"not promoted: {gate['reason']}"
        )
        if not gate["passed"]:
            return
        self.stage("promote")
        self.heartbeat.check()
        try:
            self.registry.promote(
                version, reason=f"job {self.record.id}: {gate['reason']}", expected_etag=etag
            )
        except AliasConflict as exc:
            self.record = self.record.replace(note=f"not promoted: {exc}")
            return
        self.record = self.record.replace(promoted=True, note="promoted")

    def run(self, work: Path, channels: Path | None) -> JobRecord:
        """Runs every stage; returns the final (succeeded) record."""
        data = work / "data"
        pending = list(self.store.list(layout.model_prefix(PENDING, self.record.model)))
        self.stage("snapshot", pending=len(pending))
        counts = snapshot(self.store, self.record.model, data, channels)
        self.record = self.record.replace(data=counts)
        live_dir, live_etag = self.live_model(work, channels)
        if not counts["seg_test"]:
            raise JobFailed("the data bucket has no test split (test/<class>/...)")
        if live_dir is not None:
            live_classes = set(json.loads((live_dir / artifact.LABELS).read_text()))
            missing = sorted(live_classes - set(counts["seg_train"]))
            if missing:
                raise JobFailed(f"no training images of the live model's classes {missing}")
        cache = None
        if self.record.mode == "warm" and live_dir is not None:
            downloaded = self.fetch_embeddings(work / "embeddings")
            cache = (work / "embeddings", downloaded) if downloaded is not None else None
        model_dir = work / "model"
        self.train(data, live_dir, model_dir, cache)
        gate = self.evaluate(model_dir, live_dir, data / "seg_test")
        self.publish(model_dir, data / "seg_test", gate, live_etag)
        # What this job trained on is no longer new (markers that arrived since stay).
        for key in pending:
            self.store.delete(key)
        return write_job(
            self.store,
            self.record,
            status=JobStatus.SUCCEEDED,
            stages=self.end_stage(),
            finished_at=iso(now()),
        )


def run_job(
    store: Store,
    settings: RetrainSettings,
    job_id: str,
    *,
    deadline: float | None = None,
    channels: Path | None = None,
) -> JobRecord:
    """Runs job ``job_id`` to the end and records how it ended; never raises for a job failure.

    Args:
        store: the data bucket.
        settings: the retrain settings (MODEL_REGISTRY_URI: where the job's model is published).
        job_id: a job whose record exists and for which the lock is taken.
        deadline: ``time.monotonic()`` by which the job must be over (the lambda backend).
        channels: SageMaker's input channel folder (``/opt/ml/input/data``).

    Returns:
        The job's final record.
    """
    record = read_job(store, job_id)
    record = write_job(
        store,
        record,
        status=JobStatus.RUNNING,
        started_at=iso(now()),
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    try:
        lock = resume_lock(store, record.model, job_id, settings.lock_ttl_seconds)
    except LockLost as exc:
        return write_job(store, record, status=JobStatus.FAILED, error=str(exc))
    job = None
    for folder in remove_stale_workdirs():
        log.info("removed the scratch folder of a job that died: %s", folder)
    workdir = tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
    try:
        with Heartbeat(lock) as heartbeat, workdir as tmp:
            registry = open_registry(settings.model_registry_uri, record.model)
            job = Job(store, registry, settings, record, heartbeat, deadline)
            final = job.run(Path(tmp), channels)
    except Exception as exc:  # noqa: BLE001 - whatever happened is recorded, then the lock freed
        log.exception("job %s failed", job_id)
        latest = job.record.replace(stages=job.end_stage()) if job is not None else record
        return write_job(
            store,
            latest,
            status=JobStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}",
            finished_at=iso(now()),
        )
    finally:
        lock.release()
    follow_up(store, settings, final, deadline)
    return final


def follow_up(
    store: Store, settings: RetrainSettings, done: JobRecord, deadline: float | None
) -> JobRecord | None:
    """Starts the next job of a model when enough images arrived while ``done`` ran.

    Uploads during a job find the lock taken and start nothing; without this they would wait for
    yet another upload. Only after a job that succeeded (it removed the markers of what it trained
    on), so a failing job cannot start itself again and again.

    Returns:
        The follow-up job's record, or None when none was due (or another job got the lock).
    """
    model = done.model
    pending = count_pending(store, model, settings.min_new_images)
    if done.status != JobStatus.SUCCEEDED or pending < settings.min_new_images:
        return None
    live = done.version if done.promoted else done.compared_with
    log.info("job %s: %d new images arrived meanwhile: a follow-up job", done.id, pending)
    try:
        return start_job(
            store,
            settings,
            model=model,
            reason=f"follow-up of {done.id}: {pending}+ images arrived while it ran",
            mode="warm",
            live_version=live,
            run_in_process=lambda job_id: run_job(store, settings, job_id, deadline=deadline),
        )
    except LockHeld:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one job from the command line (the local and SageMaker backends start this)."""
    parser = argparse.ArgumentParser(prog="python -m imgclf.retrain.job", description=__doc__)
    parser.add_argument("--job-id", required=True, help="the job recorded in jobs/<id>.json")
    parser.add_argument("--channels", type=Path, help="SageMaker input channels folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[job] %(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    settings = RetrainSettings.from_env()
    store = layout.data_store(settings.data_bucket)
    record = run_job(store, settings, args.job_id, channels=args.channels)
    summary = {k: record.to_dict()[k] for k in ("id", "status", "version", "promoted", "error")}
    print(json.dumps(summary))
    return 0 if record.status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
