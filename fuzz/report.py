"""The fuzz report: outcomes by group and status, the targets, memory per format, the slowest.

``summarize`` turns the per-case results into the JSON that ``docs/fuzz.json`` holds;
``markdown`` renders ``docs/fuzz.md`` from that JSON alone, so every figure in the docs comes from
a run.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fuzz.runner import ANSWERED, CRASH, HANG, OOM, SERVER_ERROR, Result

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
# "Admitted" cases answered 200: their time is what a limit lets a request take.
SLOWEST_ADMITTED_TARGET_SECONDS = 2.0


def template_memory_floor(template: Path = TEMPLATE) -> int:
    """The smallest memory (MB) template.yaml allows PredictFunction (PredictMemorySize's MinValue).

    Raises:
        ValueError: the parameter or its MinValue is missing.
    """
    text = template.read_text()
    block = re.search(r"^  PredictMemorySize:\n((?:    .*\n|\s*\n)+)", text, re.M)
    minimum = re.search(r"^    MinValue: (\d+)", block[1] if block else "", re.M)
    if not minimum:
        raise ValueError("template.yaml: PredictMemorySize has no MinValue")
    return int(minimum[1])


def _column(result: Result) -> str:
    return str(result.status) if result.outcome == ANSWERED else result.outcome


def _brief(result: Result) -> dict[str, Any]:
    return {
        "name": result.name,
        "status": result.status,
        "code": result.code,
        "bytes": result.size,
        "seconds": result.seconds,
        "cpu_seconds": result.cpu_seconds,
        "peak_rss_mb": result.peak_rss_mb,
        "outcome": result.outcome,
        "detail": result.detail,
        "expected": result.expected,
    }


def summarize(results: Iterable[Result], meta: dict[str, Any]) -> dict[str, Any]:
    """The report's JSON: every count and figure the Markdown shows.

    Args:
        results: one per case.
        meta: how the run was made (command, date, machine, limits, corpus).

    Returns:
        ``{"meta", "totals", "by_group", "codes", "peak_rss", "slowest_admitted", "slowest",
        "failures", "targets"}``.
    """
    results = list(results)
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    codes: Counter[str] = Counter()
    for r in results:
        by_group[r.group.split(":")[0] if r.group.startswith("mutation") else r.group][
            _column(r)
        ] += 1
        if r.outcome == ANSWERED and r.code and not r.code.startswith("batch"):
            codes[f"{r.status} {r.code}"] += 1
    outcomes = Counter(r.outcome for r in results)
    unexpected = [r for r in results if r.outcome == ANSWERED and not r.ok]
    failures = [r for r in results if r.outcome != ANSWERED] + unexpected
    peak: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.fmt not in peak or r.peak_rss_mb > peak[r.fmt]["peak_rss_mb"]:
            peak[r.fmt] = {"peak_rss_mb": r.peak_rss_mb, "case": r.name, "status": r.status}
    overall = max(results, key=lambda r: r.peak_rss_mb)
    admitted = sorted(
        (r for r in results if r.outcome == ANSWERED and r.status == 200),
        key=lambda r: r.cpu_seconds,
        reverse=True,
    )
    refused = sorted(
        (r for r in results if r.outcome == ANSWERED and r.status != 200),
        key=lambda r: r.cpu_seconds,
        reverse=True,
    )
    floor = template_memory_floor()
    slowest = admitted[0] if admitted else None
    targets = [
        _target("answers with a 5xx status", outcomes[SERVER_ERROR], 0),
        _target("crashes (the interpreter died)", outcomes[CRASH], 0),
        _target("hangs (over the CPU or wall limit)", outcomes[HANG], 0),
        _target("out of memory (over the address-space limit)", outcomes[OOM], 0),
        _target("answers other than the case expects", len(unexpected), 0),
        _target(
            "connections that URL cases made to the loopback listener",
            meta.get("url_connections", 0),
            0,
        ),
        {
            "target": f"peak RSS (MB) < template.yaml's minimum PredictMemorySize ({floor} MB)",
            "value": overall.peak_rss_mb,
            "met": overall.peak_rss_mb < floor,
            "detail": overall.name,
        },
        {
            "target": f"slowest admitted case, CPU seconds < {SLOWEST_ADMITTED_TARGET_SECONDS}",
            "value": slowest.cpu_seconds if slowest else 0.0,
            "met": (slowest.cpu_seconds if slowest else 0.0) < SLOWEST_ADMITTED_TARGET_SECONDS,
            "detail": slowest.name if slowest else "",
        },
    ]
    return {
        "meta": {**meta, "template_min_memory_mb": floor},
        "totals": {"cases": len(results), **{k: outcomes[k] for k in sorted(outcomes)}},
        "by_group": {g: dict(sorted(c.items())) for g, c in sorted(by_group.items())},
        "codes": dict(sorted(codes.items())),
        "peak_rss": {
            "overall": _brief(overall),
            "by_format": dict(sorted(peak.items())),
        },
        "slowest_admitted": [_brief(r) for r in admitted[:10]],
        "slowest_refused": [_brief(r) for r in refused[:5]],
        "failures": [_brief(r) for r in failures[:100]],
        "targets": targets,
    }


def _target(name: str, value: int, limit: int) -> dict[str, Any]:
    return {"target": f"{name} == {limit}", "value": value, "met": value == limit, "detail": ""}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _name(case: str) -> str:
    return f"`{case}`"


def markdown(report: dict[str, Any]) -> str:
    """``docs/fuzz.md`` from the report's JSON."""
    meta = report["meta"]
    limits = meta["image_limits"]
    totals = report["totals"]
    columns = sorted(
        {c for counts in report["by_group"].values() for c in counts},
        key=lambda c: (not c.isdigit(), c),
    )
    corpus = meta.get("corpus")
    corpus_line = (
        f"`{corpus['source']}` (sha256 `{corpus['sha256'][:16]}`…), {corpus['files']} files in "
        "`Tests/images`"
        if corpus
        else "none (`--no-corpus`)"
    )
    lines = [
        "# Hostile input: the fuzz run",
        "",
        f"Produced by `{meta['command']}` on {meta['date']} (commit {meta['commit']}, scale "
        f"`{meta['scale']}`, seed {meta['seed']}, {meta['seconds']:.0f} s). Every figure below "
        "comes from `fuzz.json`, written by the same run.",
        "",
        f"- **Machine:** {meta['machine']}; Python {meta['python']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".",
        f"- **Corpus:** {corpus_line}, each sent as it is and, for the JPEG/PNG/GIF/WebP/BMP "
        "files, mutated (truncated, bytes flipped, header dimensions that lie, a slice repeated, "
        "spliced with another file); plus the hostile files, batches, malformed requests and "
        "refused URLs made by `fuzz/cases.py`.",
        f"- **Method:** each case is one `POST /predict` event through `lambda_func."
        "lambda_handler` (bundled model, the settings' defaults: the values template.yaml "
        f"sets), in a child forked from a warmed-up parent ({meta['baseline_rss_mb']:.0f} MB "
        f"resident), with {meta['limits']['cpu_seconds']} s of CPU, "
        f"{meta['limits']['wall_seconds']:.0f} s of wall time and "
        f"{meta['limits']['memory_mb']} MB of extra address space. Peak RSS is the whole "
        "process's, as Lambda counts it: the parent's resident set at the fork plus what the "
        "child added to its own (`ru_maxrss`).",
        f"- **Limits:** MAX_IMAGE_PIXELS {limits['max_pixels']:,}, MAX_DECODED_BYTES "
        f"{limits['max_decoded_bytes']:,}, MAX_JPEG_SCANS {limits['max_jpeg_scans']}, "
        f"MAX_IMAGE_CHUNKS {limits['max_image_chunks']:,}, MAX_BATCH_DECODED_BYTES "
        f"{limits['max_batch_decoded_bytes']:,}, MAX_BODY_BYTES {meta['max_body_bytes']:,}, "
        f"MAX_BATCH {meta['max_batch']}.",
        "",
        "## Targets",
        "",
        _table(
            ["target", "measured", "", "case"],
            [
                [
                    t["target"],
                    t["value"],
                    "met" if t["met"] else "**missed**",
                    _name(t["detail"]) if t["detail"] else "",
                ]
                for t in report["targets"]
            ],
        ),
        "",
        f"## Outcomes by group and HTTP status ({totals['cases']} cases)",
        "",
        "Groups: `corpus` (the files as they are), `mutation` (all kinds), `hostile` (made to cost "
        "the most a limit admits or to pass it), `batch`, `request` (malformed requests), `url` "
        "(addresses that must not be fetched). Columns other than a status are failures: "
        "`5xx`, `crash`, `hang`, `oom`.",
        "",
        _table(
            ["group", *columns, "total"],
            [
                [group, *[counts.get(c, 0) for c in columns], sum(counts.values())]
                for group, counts in report["by_group"].items()
            ],
        ),
        "",
        "Error codes among the answers:",
        "",
        _table(["status and code", "cases"], [[k, v] for k, v in report["codes"].items()]),
        "",
        "## Peak memory by format",
        "",
        f"The most any case took: **{report['peak_rss']['overall']['peak_rss_mb']:.0f} MB**, "
        f"{_name(report['peak_rss']['overall']['name'])} (template.yaml's minimum: "
        f"{meta['template_min_memory_mb']} MB).",
        "",
        _table(
            ["format", "peak RSS (MB)", "case", "status"],
            [
                [fmt, f"{v['peak_rss_mb']:.0f}", _name(v["case"]), v["status"]]
                for fmt, v in report["peak_rss"]["by_format"].items()
            ],
        ),
        "",
        "## Slowest admitted cases (answered 200)",
        "",
        "CPU seconds of the whole child (event, base64, decode, inference, answer); wall seconds "
        "of the handler call.",
        "",
        _slow_table(report["slowest_admitted"]),
        "",
        "Slowest refusals (a limit's check has to be cheap too):",
        "",
        _slow_table(report["slowest_refused"]),
        "",
        "## Failures",
        "",
    ]
    if report["failures"]:
        lines.append(
            _table(
                ["case", "outcome", "status", "code", "expected", "detail"],
                [
                    [
                        _name(f["name"]),
                        f["outcome"],
                        f["status"],
                        f["code"],
                        f["expected"],
                        f["detail"],
                    ]
                    for f in report["failures"]
                ],
            )
        )
    else:
        lines.append("None: every case was answered, and as expected where it expects an answer.")
    return "\n".join(lines) + "\n"


def _slow_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["case", "status", "code", "bytes", "CPU s", "wall s", "peak RSS (MB)"],
        [
            [
                _name(r["name"]),
                r["status"],
                r["code"],
                f"{r['bytes']:,}",
                f"{r['cpu_seconds']:.3f}",
                f"{r['seconds']:.3f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
            for r in rows
        ],
    )
