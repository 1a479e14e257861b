"""The training jobs' command line: ``python -m imgclf.retrain [--bucket B] list | request``.

``list`` shows every job with its model, status and outcome, and for each model with data how many
new images wait for its next job; ``request --model NAME [--mode warm|full]`` asks for a retraining
now (an object ``incoming/_retrain/<model>.json``, which the retrain function picks up like any
upload).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from imgclf import layout
from imgclf.retrain.ingest import TRAIN_MODES
from imgclf.retrain.launch import count_pending
from imgclf.retrain.lock import lock_holder
from imgclf.retrain.records import list_jobs, read_job
from imgclf.settings import RetrainSettings
from imgclf.storage import Store

HEADER = f"{'job':<26}  {'model':<12}  {'status':<9}  {'backend':<9}  {'version':>7}  outcome"


def pending_line(store: Store, model: str, threshold: int) -> str:
    """``scene: 3 of 50 new images pending; a job starts at 50 (RETRAIN_MIN_NEW_IMAGES)``."""
    pending = count_pending(store, model, threshold)
    holder = lock_holder(store, model)
    if holder:
        when = f"job {holder} is running; the next starts when it ends"
    elif pending >= threshold:
        when = "the next upload starts a job"
    else:
        when = f"a job starts at {threshold} (RETRAIN_MIN_NEW_IMAGES)"
    return f"{model}: {pending} of {threshold} new images pending; {when}"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code."""
    settings = RetrainSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m imgclf.retrain", description=__doc__)
    parser.add_argument("--bucket", default=settings.data_bucket, help="DATA_BUCKET")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every job with its model, status, version and outcome")
    request = commands.add_parser("request", help="ask for a retraining (incoming/_retrain/)")
    request.add_argument("--model", required=True, help="the model to retrain")
    request.add_argument("--mode", choices=TRAIN_MODES, default="warm")
    args = parser.parse_args(argv)
    store = layout.data_store(args.bucket)
    if args.command == "request":
        if not layout.NAME.fullmatch(args.model):
            parser.error(f"{args.model!r} is not a model name")
        key = f"{layout.TRIGGER_PREFIX}{args.model}.json"
        store.put(key, json.dumps({"mode": args.mode}).encode())
        print(f"requested: {layout.bucket_uri(args.bucket, key)}")
        return 0
    job_ids = list_jobs(store)
    print(HEADER)
    for job_id in job_ids:
        record = read_job(store, job_id)
        outcome = record.note or record.error or record.stage or ""
        print(
            f"{job_id:<26}  {record.model:<12}  {record.status:<9}  {record.backend:<9}  "
            f"{record.version or '-':>7}  {outcome}"
        )
    if not job_ids:
        print("(no training job yet)")
    splits = (layout.TRAIN, layout.TEST, layout.PENDING)
    models = sorted({model for split in splits for model in store.list_folders(split)})
    print()
    for model in models:
        print(pending_line(store, model, settings.min_new_images))
    if not models:
        print("(no training data yet: upload to incoming/<model>/<class>/<file>)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
