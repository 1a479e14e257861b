"""Trigger -> new version served: one retraining job timed stage by stage, with the embedding cache
and without it.

    python -m benchmarks.retrain                  # = make bench-retrain -> reports/bench-retrain/
    python -m benchmarks.retrain --cached 200 --new 20 --out /tmp/r   # a smaller run

A data bucket and a registry (moto's S3 server on loopback, or ``--store folder``) get a live
transfer model (``model/content`` when it is there, else ``train.py --quick`` on the photos, then
``convert.py``) and ``--cached`` real photos of ``data/photos`` (``make photo-data``) in their
own splits. Then three warm jobs run through ``imgclf.retrain.launch.start_job`` and
``imgclf.retrain.job.run_job`` in this process (the lambda backend's path; training and conversion
in their subprocesses, as always):

1. a first job, which computes every image's features and leaves them in ``embeddings/``;
2. ``--new`` more photos are ingested (``store_image``, the split their hash picks, with pending
   markers), and the measured job runs: **cache**, ``--cached`` images cached and ``--new`` new;
3. ``embeddings/`` is emptied and the same job runs again: **no cache**, every image computed (it
   also writes and uploads the shard a later job would read: the "cache upload" row).

Each job's stages come from its record (``stages``, ``embedding_cache``) and the new version's
``metrics.json`` (``timings``); the publish check's subprocess is timed by wrapping
``imgclf.artifact.verify_in_subprocess``; the two subprocesses' imports are timed apart, in fresh
processes. After each job a serving ``ModelHolder`` that had loaded the previous version refreshes
(its clock moved by MODEL_REFRESH_SECONDS) and the load of the new version is timed. Trigger ->
served is the job plus the refresh interval (worst case) plus that load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgclf import artifact, layout
from imgclf.preprocess import IMAGE_SUFFIXES
from imgclf.registry import Registry, open_registry
from imgclf.retrain.ingest import split_of, store_image, validate_image
from imgclf.retrain.job import run_job
from imgclf.retrain.launch import start_job
from imgclf.retrain.records import JobRecord
from imgclf.settings import PROJECT_ROOT, RetrainSettings, ServeSettings
from imgclf.storage import Store, open_store

PHOTOS = PROJECT_ROOT / "data" / "photos"
BUNDLED = PROJECT_ROOT / "model" / "content"
DEFAULT_OUT = PROJECT_ROOT / "reports" / "bench-retrain"
MODEL = "content"
# The target: trigger -> new version served, 1,000 cached + 50 new images.
TARGET_SECONDS = 60.0
# The quality gate lets any model through: the job is timed to the end, promotion included.
TOLERANCE = 1.0
# Rows of the table, in the order a job runs them, and what each one is.
ROWS = (
    ("imports", "imports of the training and conversion processes (timed apart)"),
    ("snapshot", "snapshot: images and live model from the bucket"),
    ("cache_download", "embedding cache: shards from the bucket"),
    ("training_rest", "training: model load, decoding, test predictions, saving"),
    ("embedding", "embedding: images through the backbone (or the cache)"),
    ("head_fit", "head fit"),
    ("cache_upload", "embedding cache: new shard to the bucket (and merges)"),
    ("conversion", "conversion: TFLite, int8 calibration, parity gate, OOD fit"),
    ("evaluation", "evaluation: new and live TFLite models on the test split"),
    ("checks", "checks: the published files verified in a subprocess"),
    ("publish", "publish and promote: uploads, alias"),
    ("job", "job: trigger -> promoted"),
    ("refresh_interval", "serving: refresh interval (MODEL_REFRESH_SECONDS, worst case)"),
    ("serving_load", "serving: new version downloaded, verified, loaded"),
    ("served", "trigger -> new version served"),
)
TOTALS = ("job", "served")


@dataclass
class Images:
    """The photos the benchmark stores: the ones cached before the measured job, and the new."""

    cached: list[tuple[str, str, Path]]  # (split, class, file)
    new: list[tuple[str, Path]]  # (class, file)


def pick_images(photos: Path, cached: int, new: int) -> Images:
    """``cached`` photos in their own splits (test in the share the photos have) and ``new`` more
    training photos, taken round-robin over the classes so every class has its share.

    Raises:
        SystemExit: too few photos.
    """
    files = {
        split: {
            c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for c in sorted((photos / split).iterdir())
            if c.is_dir()
        }
        for split in ("train", "test")
    }
    counts = {split: sum(map(len, by_class.values())) for split, by_class in files.items()}
    test_count = round(cached * counts["test"] / (counts["train"] + counts["test"]))
    if counts["test"] < test_count or counts["train"] < cached - test_count + new:
        raise SystemExit(f"{photos} has too few photos ({counts}) for {cached} + {new}")

    def take(by_class: dict[str, list[Path]], count: int) -> list[tuple[str, Path]]:
        taken: list[tuple[str, Path]] = []
        while len(taken) < count:
            for name, paths in by_class.items():
                if paths and len(taken) < count:
                    taken.append((name, paths.pop(0)))
        return taken

    chosen = [("train", c, p) for c, p in take(files["train"], cached - test_count)]
    chosen += [("test", c, p) for c, p in take(files["test"], test_count)]
    return Images(chosen, take(files["train"], new))


def put_image(store: Store, split: str, class_name: str, path: Path, pending: bool) -> None:
    """Stores a photo as ingestion stores it (named by its sha256)."""
    data = path.read_bytes()
    suffix = validate_image(data, RetrainSettings())
    store_image(store, split, MODEL, class_name, data, suffix, pending=pending)


# ---- the stores --------------------------------------------------------------------------------
@contextlib.contextmanager
def stores(kind: str, work: Path) -> Iterator[tuple[Store, str]]:
    """The data bucket and the registry URI: moto's S3 server on loopback, or local folders."""
    if kind == "folder":
        yield open_store(str(work / "data-bucket")), str(work / "registry")
        return
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for bucket in ("bench-data", "bench-models"):
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield layout.data_store("bench-data"), "s3://bench-models/models"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


# ---- the live model ----------------------------------------------------------------------------
def is_transfer_model(folder: Path) -> bool:
    """Whether a model folder holds a converted transfer model (EfficientNet-Lite backbone)."""
    needed = (artifact.KERAS, artifact.MODEL, artifact.MANIFEST, artifact.LABELS, artifact.METRICS)
    if not all((folder / name).is_file() for name in needed):
        return False
    metrics = json.loads((folder / artifact.METRICS).read_text())
    return str(metrics.get("backbone") or "").startswith("efficientnet_lite")


def live_model(work: Path, photos: Path) -> tuple[Path, str]:
    """``model/content`` when it is a transfer model, else one trained now (``--quick``)."""
    if is_transfer_model(BUNDLED):
        return BUNDLED, f"{BUNDLED.relative_to(PROJECT_ROOT)} (reused)"
    trained, converted = work / "built-train", work / "built-model"
    print("no transfer model in model/content: training one (train.py --quick, then convert.py)")
    train = [sys.executable, "train.py", "--data", photos, "--out", trained, "--quick"]
    subprocess.run([*map(str, train), "--val-by-source"], cwd=PROJECT_ROOT, check=True)
    convert = ["convert.py", "--model-dir", trained, "--data", photos, "--out", converted]
    subprocess.run(
        [sys.executable, *map(str, convert), "--name", MODEL], cwd=PROJECT_ROOT, check=True
    )
    return converted, "train.py --quick on the photos (model/content is not there)"


# ---- measuring ---------------------------------------------------------------------------------
def import_seconds(module: str) -> float:
    """Seconds a fresh interpreter takes to start and import ``module``."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=PROJECT_ROOT, check=True)
    return time.monotonic() - started


@contextlib.contextmanager
def timed_checks() -> Iterator[list[float]]:
    """Times every ``artifact.verify_in_subprocess`` call (the registry's publish check)."""
    original = artifact.verify_in_subprocess
    seconds: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        started = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.monotonic() - started)

    artifact.verify_in_subprocess = timed
    try:
        yield seconds
    finally:
        artifact.verify_in_subprocess = original


class Serving:
    """A serving container's model holder, stepped through refreshes by its own clock."""

    def __init__(self, registry_uri: str) -> None:
        from aws_lambda_powertools import Logger

        from imgclf.serving.model_holder import ModelHolder

        self.settings = ServeSettings(model_name=MODEL, model_registry_uri=registry_uri)
        self.now = 0.0
        logger = Logger(service="bench-retrain", level="WARNING")
        self.holder = ModelHolder(self.settings, logger, clock=lambda: self.now, name=MODEL)

    def refresh(self) -> tuple[str | None, float]:
        """The version served after the next refresh, and the seconds the refresh took."""
        self.now += self.settings.model_refresh_seconds
        started = time.monotonic()
        version = self.holder.get().version
        return version, time.monotonic() - started


def run_one(store: Store, settings: RetrainSettings, registry: Registry, reason: str) -> JobRecord:
    """Starts a warm job in this process and waits for it to end."""
    live = registry.read_live()[0]["version"]
    record = start_job(
        store,
        settings,
        model=MODEL,
        reason=reason,
        mode="warm",
        live_version=live,
        run_in_process=lambda job_id: run_job(store, settings, job_id),
    )
    if record.status != "succeeded" or not record.promoted:
        raise SystemExit(f"the job did not publish a live version: {record.to_dict()}")
    return record


def figures(
    record: JobRecord,
    registry: Registry,
    wall: float,
    checks: float,
    imports: dict[str, float],
    served: tuple[str | None, float],
    refresh_interval: float,
) -> dict[str, Any]:
    """One job's rows (seconds), from its record, its version's metrics and what was timed."""
    assert record.version is not None
    stages = record.stages
    cache = record.embedding_cache
    timings = registry.describe(record.version)["metrics"].get("timings", {})
    embedding = float(timings.get("embedding_seconds", 0.0))
    fit = float(timings.get("fit_seconds", 0.0))
    upload = float(cache.get("upload_seconds", 0.0))
    download = float(cache.get("download_seconds", 0.0))
    version, load = served
    if version != record.version:
        raise SystemExit(f"serving has {version} after the refresh, not {record.version}")
    rows = {
        "imports": imports["training"] + imports["conversion"],
        "snapshot": stages["snapshot"] - download,
        "cache_download": download,
        "training_rest": stages["train"] - imports["training"] - embedding - fit - upload,
        "embedding": embedding,
        "head_fit": fit,
        "cache_upload": upload,
        "conversion": stages["convert"] - imports["conversion"],
        "evaluation": stages["evaluate"],
        "checks": checks,
        "publish": stages["publish"] - checks + stages.get("promote", 0.0),
        "job": wall,
        "refresh_interval": refresh_interval,
        "serving_load": load,
        "served": wall + refresh_interval + load,
    }
    return {
        "seconds": {k: round(v, 2) for k, v in rows.items()},
        "images": {k: cache.get(k) for k in ("images", "cached", "computed")},
        "job": {
            "id": record.id,
            "version": record.version,
            "stages": stages,
            "embedding_cache": cache,
            "unaccounted_seconds": round(wall - sum(stages.values()), 2),
        },
        "training_timings": timings,
    }


def measure_job(
    store: Store,
    settings: RetrainSettings,
    registry: Registry,
    serving: Serving,
    imports: dict[str, float],
    reason: str,
) -> dict[str, Any]:
    """Runs one job and serving's refresh after it; returns its figures."""
    print(f"==> job: {reason}")
    with timed_checks() as checks:
        started = time.monotonic()
        record = run_one(store, settings, registry, reason)
        wall = time.monotonic() - started
    served = serving.refresh()
    result = figures(
        record,
        registry,
        wall,
        sum(checks),
        imports,
        served,
        serving.settings.model_refresh_seconds,
    )
    served_after = result["seconds"]["served"]
    print(f"    computed {describe(result)}: job {wall:.1f} s, served after {served_after} s")
    return result


# ---- the report --------------------------------------------------------------------------------
def table(columns: dict[str, dict[str, Any]]) -> list[str]:
    """The markdown table: one row per stage, one column per run."""
    names = list(columns)
    lines = [
        "| stage | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for key, label in ROWS:
        cells = [f"{columns[n]['seconds'][key]:.1f} s" for n in names]
        if key in TOTALS:
            label, cells = f"**{label}**", [f"**{c}**" for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def dominant(result: dict[str, Any]) -> tuple[str, float]:
    """The stage that takes the most time (totals and the fixed refresh interval aside)."""
    seconds = {k: v for k, v in result["seconds"].items() if k not in (*TOTALS, "refresh_interval")}
    key = max(seconds, key=lambda k: seconds[k])
    return dict(ROWS)[key], seconds[key]


def describe(result: dict[str, Any]) -> str:
    """``50 of 1,050 (1,000 cached)``: what a job computed."""
    images = result["images"]
    return f"{images['computed']:,} of {images['images']:,} ({images['cached']:,} cached)"


def markdown(report: dict[str, Any]) -> str:
    """``retrain.md``: the table and how it was measured."""
    config = report["config"]
    cached = report["runs"]["cache"]
    label, seconds = dominant(cached)
    verdict = "meets" if cached["seconds"]["served"] <= TARGET_SECONDS else "misses"
    lines = [
        "# Retraining: trigger -> new version served",
        "",
        f"Generated by `make bench-retrain` (`python -m benchmarks.retrain`) on "
        f"{report['machine']['cpus']} CPUs ({report['machine']['processor']}), "
        f"{report['created_at']}. A warm job on the live transfer model ({config['live_model']}) "
        f"with {config['cached']} images stored before and {config['new']} new ones "
        f"({config['store']} store); every figure in seconds of wall time.",
        "",
        *table({"no cache": report["runs"]["no cache"], "cache": cached}),
        "",
        f"Images through the backbone: {describe(report['runs']['no cache'])} without the cache, "
        f"{describe(cached)} with it.",
        "",
        f"With the cache, trigger -> served takes {cached['seconds']['served']:.1f} s: it "
        f"{verdict} the {TARGET_SECONDS:.0f} s target. The largest stage is {label} "
        f"({seconds:.1f} s).",
        "",
        "The imports are timed in fresh processes and subtracted from the training and conversion",
        'stages; the "training" row is what is left of the training subprocess. The job runs in',
        "the benchmark's process (the lambda backend); the local backend adds a Python start.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the three jobs, prints the table, writes ``OUT/retrain.json`` and ``OUT/retrain.md``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.retrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="train/ and test/ of photos")
    parser.add_argument("--cached", type=int, default=1000, help="images stored before the job")
    parser.add_argument("--new", type=int, default=50, help="images new to the measured job")
    parser.add_argument("--store", choices=("moto", "folder"), default="moto", help="S3 or disk")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the report")
    args = parser.parse_args(argv)
    if not (args.photos / "train").is_dir():
        print(f"{args.photos} is missing: run `make photo-data`", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="[job] %(levelname)s %(message)s")
    for name in ("werkzeug", "botocore"):  # moto's server logs every request
        logging.getLogger(name).setLevel(logging.WARNING)
    images = pick_images(args.photos, args.cached, args.new)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        work = Path(tmp)
        model_dir, model_source = live_model(work, args.photos)
        imports = {
            "training": import_seconds("imgclf.pipeline.training"),
            "conversion": import_seconds("imgclf.pipeline.conversion"),
        }
        print(f"imports: {imports}")
        with stores(args.store, work) as (store, registry_uri):
            registry = open_registry(registry_uri, MODEL)
            registry.promote(registry.publish(model_dir), reason="benchmark: the live model")
            for split, class_name, path in images.cached:
                put_image(store, f"{split}/", class_name, path, pending=False)
            settings = RetrainSettings(
                data_bucket="bench-data",
                model_registry_uri=registry_uri,
                backend="lambda",
                min_new_images=args.new,
                quality_tolerance=TOLERANCE,
            )
            serving = Serving(registry_uri)
            first = measure_job(
                store, settings, registry, serving, imports, f"first: {args.cached} images"
            )
            for class_name, path in images.new:
                data = path.read_bytes()
                put_image(store, split_of(data), class_name, path, pending=True)
            cached = measure_job(
                store,
                settings,
                registry,
                serving,
                imports,
                f"cache: {args.cached} cached + {args.new} new",
            )
            for key in list(store.list(layout.embeddings_prefix(MODEL))):
                store.delete(key)
            uncached = measure_job(
                store,
                settings,
                registry,
                serving,
                imports,
                f"no cache: {args.cached + args.new} computed",
            )
    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "config": {
            "cached": args.cached,
            "new": args.new,
            "store": args.store,
            "photos": str(args.photos),
            "live_model": model_source,
            "quality_tolerance": TOLERANCE,
            "target_seconds": TARGET_SECONDS,
        },
        "imports_seconds": {k: round(v, 2) for k, v in imports.items()},
        "rows": dict(ROWS),
        "runs": {"no cache": uncached, "cache": cached, "first job": first},
        "dominant_stage_with_cache": dominant(cached)[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrain.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "retrain.md").write_text(text)
    print()
    print(text)
    print(f"wrote {args.out / 'retrain.md'} and {args.out / 'retrain.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
