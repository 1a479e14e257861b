"""The training jobs' command line: ``python -m imgclf.retrain [--bucket B] list | request``.

``list`` shows every job with its status and outcome, and how many new images are waiting for the
next one; ``request [--mode warm|full]`` asks for a retraining now (an object under
``incoming/_retrain/``, which the retrain function picks up like any upload).
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
from imgclf.retrain.records import list_jobs, new_job_id, read_job
from imgclf.settings import RetrainSettings

HEADER = f"{'job':<26}  {'status':<9}  {'backend':<9}  {'version':>7}  outcome"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit code."""
    settings = RetrainSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m imgclf.retrain", description=__doc__)
    parser.add_argument("--bucket", default=settings.data_bucket, help="DATA_BUCKET")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every job with its status, version and outcome")
    request = commands.add_parser("request", help="ask for a retraining (via incoming/_retrain/)")
    request.add_argument("--mode", choices=TRAIN_MODES, default="warm")
    args = parser.parse_args(argv)
    store = layout.data_store(args.bucket)
    if args.command == "request":
        key = f"{layout.TRIGGER_PREFIX}{new_job_id()}.json"
        store.put(key, json.dumps({"mode": args.mode}).encode())
        print(f"requested: {layout.bucket_uri(args.bucket, key)}")
        return 0
    job_ids = list_jobs(store)
    print(HEADER)
    for job_id in job_ids:
        record = read_job(store, job_id)
        outcome = record.note or record.error or record.stage or ""
        print(
            f"{job_id:<26}  {record.status:<9}  {record.backend:<9}  "
            f"{record.version or '-':>7}  {outcome}"
        )
    if not job_ids:
        print("(no training job yet)")
    pending = count_pending(store, settings.min_new_images)
    holder = lock_holder(store)
    if holder:
        when = f"job {holder} is running; the next starts when it ends"
    elif pending >= settings.min_new_images:
        when = "the next upload starts a job"
    else:
        when = f"a job starts at {settings.min_new_images} (RETRAIN_MIN_NEW_IMAGES)"
    print(f"\n{pending} of {settings.min_new_images} new images pending; {when}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
