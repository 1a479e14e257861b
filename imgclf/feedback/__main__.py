"""Feedback review from the command line: ``python -m imgclf.feedback [--bucket B] COMMAND``.

Commands: ``list [--status pending|approved|rejected] [--model M]`` (one line per feedback),
``approve REQUEST_ID`` (the captured image goes to ``incoming/<model>/<label>/`` for ingestion)
and ``reject REQUEST_ID [--reason TEXT]``. The same functions as the console's admin routes,
with the caller's own AWS credentials (``make feedback`` points them at the local stack).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from imgclf import feedback, layout
from imgclf.settings import ServeSettings

HEADER = f"{'request id':<40}  {'model':<10}  {'version':>7}  {'answered':<16}  {'label':<16}  time"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; exit 1 with the reason when it cannot be done."""
    settings = ServeSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m imgclf.feedback", description=__doc__)
    parser.add_argument("--bucket", default=settings.data_bucket, help="DATA_BUCKET")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="feedback in one state (default: pending)")
    listing.add_argument("--status", choices=feedback.STATUSES, default=feedback.PENDING)
    listing.add_argument("--model", help="only this model's")
    listing.add_argument("--limit", type=int, default=100)
    approve = commands.add_parser("approve", help="send the image to training (incoming/)")
    approve.add_argument("request_id")
    reject = commands.add_parser("reject", help="never train on it")
    reject.add_argument("request_id")
    reject.add_argument("--reason", help="why (kept in the record)")
    args = parser.parse_args(argv)
    store = layout.data_store(args.bucket)
    who = f"{getpass.getuser()} (cli)"
    try:
        if args.command == "list":
            print(HEADER)
            records = list(feedback.list_feedback(store, args.status, args.model, args.limit))
            for r in sorted(records, key=lambda r: r.time):
                answered = f"{r.predicted} {r.score:.2f}"
                print(
                    f"{r.request_id:<40}  {r.model:<10}  {r.version:>7}  {answered:<16}  "
                    f"{r.label:<16}  {r.time}"
                )
            if not records:
                print(f"(no {args.status} feedback)")
        elif args.command == "approve":
            record = feedback.approve(store, args.request_id, by=who)
            print(f"approved {record.request_id}: {record.label} -> {record.incoming_key}")
        else:
            record = feedback.reject(store, args.request_id, by=who, reason=args.reason)
            print(f"rejected {record.request_id}: it will never reach training")
    except feedback.FeedbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
