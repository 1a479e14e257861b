"""``python -m fuzz``: the hostile-input run (``make fuzz``); ``--help`` lists the options.

    python -m fuzz --out docs/fuzz          # make fuzz: corpus, mutations, 40 MP files
    python -m fuzz --scale small --no-corpus    # the quick, corpus-free set -> reports/fuzz.md

The run downloads the pinned Pillow's source distribution into the cache once (``fuzz.corpus``),
makes the cases in a separate process (a 40 MP image drawn in the parent would stay in its memory
and in every child's peak), then forks one child per case from a warmed-up parent
(``fuzz.runner``) and writes ``<out>.json`` and ``<out>.md`` (``fuzz.report``) and every case's
result to ``<cache>/results.jsonl``. It exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz",
        description="Hostile input through the real handler: outcomes, memory and time per case.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "reports" / "fuzz",
        help="writes OUT.md and OUT.json (make fuzz: docs/fuzz)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / ".cache" / "fuzz",
        help="the corpus, the made cases and every case's result (git-ignored)",
    )
    parser.add_argument(
        "--scale",
        choices=("full", "small"),
        default="full",
        help="full: the issue's files and 40 MP images; small: the test suite's sizes",
    )
    parser.add_argument("--seed", type=int, default=0, help="the mutations' seed")
    parser.add_argument("--no-corpus", action="store_true", help="only the cases made by code")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--cpu-seconds", type=int, default=10, help="per case, RLIMIT_CPU")
    parser.add_argument("--wall-seconds", type=float, default=20.0, help="per case")
    parser.add_argument("--memory-mb", type=int, default=2048, help="extra address space per case")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)  # internal: cases only
    return parser.parse_args(argv)


def _generate(args: argparse.Namespace) -> int:
    """Writes every case's body under ``args.generate`` and a manifest (the child process)."""
    from fuzz import cases
    from fuzz.corpus import fetch_corpus
    from imgclf.settings import ServeSettings

    settings = ServeSettings.from_env()  # what lambda_func will read in the parent
    limits, full = settings.image_limits, args.scale == "full"
    made = [
        *cases.hostile_cases(limits, full=full),
        *cases.batch_cases(limits, settings.max_batch, full=full),
        *cases.request_cases(),
        *cases.small_mutations(args.seed),
    ]
    if not args.no_corpus:
        made += cases.corpus_cases(fetch_corpus(args.cache).folder, args.seed)
    folder = args.generate
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "bodies").mkdir(parents=True)
    manifest = []
    for i, case in enumerate(made):
        path = folder / "bodies" / f"{i:05d}.bin"
        path.write_bytes(case.read())
        manifest.append(dataclasses.replace(case, body=None, path=path).to_json())
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return 0


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model or platform.processor()}, {os.cpu_count()} CPUs, load average {load} at start"


def _commit() -> str:
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    """Runs the fuzz cases and writes the report; exits 1 when a target is missed."""
    args = _parse(argv)
    if args.generate:
        return _generate(args)
    started = time.monotonic()
    corpus = None
    if not args.no_corpus:
        from fuzz.corpus import fetch_corpus

        corpus = fetch_corpus(args.cache)
    generated = args.cache / f"cases-{args.scale}-{args.seed}{'' if corpus else '-no-corpus'}"
    command = [sys.executable, "-m", "fuzz", "--generate", str(generated), "--scale", args.scale]
    command += ["--seed", str(args.seed), "--cache", str(args.cache)]
    command += ["--no-corpus"] if args.no_corpus else []
    subprocess.run(command, cwd=ROOT, check=True)
    print(f"cases made in {time.monotonic() - started:.0f} s", file=sys.stderr)

    # The handler as deployed: the bundled model, no private URLs, the settings' defaults.
    os.environ.update(MODEL_REGISTRY_URI="", PRIVATE_URL_ENDPOINTS="", POWERTOOLS_LOG_LEVEL="INFO")
    import PIL
    from PIL import features

    import lambda_func
    from fuzz import cases, report
    from fuzz.runner import Limits, Runner, resident_mb

    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    all_cases = [
        cases.Case.from_json(c) for c in json.loads((generated / "manifest.json").read_text())
    ]
    all_cases += cases.url_cases(listener.getsockname()[1])
    if args.only:
        all_cases = [c for c in all_cases if args.only in c.name]
    runner = Runner(
        handler=lambda_func.lambda_handler,
        log_stream=lambda_func.logger.registered_handler.setStream,
        limits=Limits(args.cpu_seconds, args.wall_seconds, args.memory_mb),
        listener=listener,
    )
    runner.warm_up(cases.warm_up_cases())
    baseline = resident_mb()
    results = []
    log = args.cache / "results.jsonl"
    with log.open("w") as out:
        for n, result in enumerate(runner.run_all(all_cases), 1):
            results.append(result)
            out.write(json.dumps(result.to_json()) + "\n")
            if not result.ok:
                print(
                    f"  {result.outcome} {result.status} {result.code}: {result.name} "
                    f"(expected {result.expected}) {result.detail}",
                    file=sys.stderr,
                )
            if n % 250 == 0:
                print(f"{n}/{len(all_cases)} cases", file=sys.stderr)
    settings = lambda_func.settings
    meta: dict[str, Any] = {
        "command": "python -m fuzz " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "scale": args.scale,
        "seed": args.seed,
        "seconds": round(time.monotonic() - started, 1),
        "machine": _machine(),
        "python": platform.python_version(),
        "versions": {
            "pillow": PIL.__version__,
            "libjpeg-turbo": features.version("jpg"),
            "libwebp": features.version("webp"),
            "zlib": features.version("zlib"),
        },
        "corpus": dataclasses.asdict(corpus) | {"folder": None} if corpus else None,
        "limits": dataclasses.asdict(runner.limits),
        "image_limits": dataclasses.asdict(settings.image_limits),
        "max_body_bytes": settings.max_body_bytes,
        "max_batch": settings.max_batch,
        "baseline_rss_mb": round(baseline, 1),
        "url_connections": runner.connections_seen(),
    }
    summary = report.summarize(results, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(report.markdown(summary))
    missed = [t["target"] for t in summary["targets"] if not t["met"]]
    print(
        f"{len(results)} cases in {meta['seconds']:.0f} s -> {args.out}.md; "
        f"targets missed: {missed or 'none'}",
        file=sys.stderr,
    )
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
