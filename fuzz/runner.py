"""Runs each case through the real handler in a child forked from a warmed-up process.

The parent imports ``lambda_func`` (settings, model, LiteRT) once and answers a few warm-up
requests, so Pillow's plugins and the interpreter are ready; each case then runs in a ``fork`` of
it, as a request runs in a warm Lambda environment, without paying the import. The child sets its
own limits before it touches the case: a CPU-time limit (``RLIMIT_CPU``), an address-space limit
(``RLIMIT_AS``; Linux does not enforce ``RLIMIT_RSS``), no core files; the parent adds a wall
clock. A case that hangs, runs out of memory or crashes the interpreter is counted, not fatal.
Peak memory is the process's, as Lambda counts it: the parent's resident set at the fork plus
what the child added to its own (``wait4``'s ``ru_maxrss`` minus the child's resident set when it
started; a fork maps the parent's file-backed pages, its libraries and model, lazily, so the
child's own ``ru_maxrss`` alone would leave most of them out).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from fuzz.cases import Case

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

# What each outcome means; every one but "answered" is a failure of the service.
ANSWERED, SERVER_ERROR, CRASH, HANG, OOM = "answered", "5xx", "crash", "hang", "oom"
OUTCOMES = (ANSWERED, SERVER_ERROR, CRASH, HANG, OOM)


@dataclass(frozen=True)
class Limits:
    """What one case may take before it counts as a hang or an out-of-memory.

    Attributes:
        cpu_seconds: CPU time of the child (``RLIMIT_CPU``); over it, SIGXCPU ends it: a hang.
        wall_seconds: wall time, measured by the parent; over it, SIGKILL: a hang.
        memory_mb: address space the child may add to what it inherits (``RLIMIT_AS``); over it
            allocations fail: an out-of-memory. Address space, not resident memory, so it is
            generous (threads reserve stacks and malloc arenas they never touch).
    """

    cpu_seconds: int = 10
    wall_seconds: float = 20.0
    memory_mb: int = 2048


@dataclass
class Result:
    """What became of one case.

    Attributes:
        name: the case's name.
        group: the case's group.
        fmt: the image format (or "request" for the request-shape cases).
        size: the body's size in bytes.
        outcome: one of ``OUTCOMES``.
        status: the HTTP status (0 when there was no answer).
        code: the error code of the answer ("" for a 200); for a batch, its items' statuses.
        seconds: wall time of the handler call (or until the child was stopped).
        cpu_seconds: CPU time of the child, user + system.
        peak_rss_mb: the process's peak resident set (see the module docstring).
        detail: for a failure: the exception, signal or limit.
        expected: the (status, code) the case expects, when it expects one.
    """

    name: str
    group: str
    fmt: str
    size: int
    outcome: str
    status: int = 0
    code: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    detail: str = ""
    expected: list[Any] | None = None

    @property
    def ok(self) -> bool:
        """Answered, and as expected if the case expects something."""
        if self.outcome != ANSWERED:
            return False
        if self.expected is None:
            return True
        status, code = self.expected
        return self.status == status and (code is None or self.code == code)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_event(case: Case, body: bytes) -> dict[str, Any]:
    """The API Gateway event (from ``events/``) that carries the case's request."""
    event = copy.deepcopy(_template(case.event))
    headers = {k: v for k, v in event["headers"].items() if k.lower() != "content-type"}
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    headers["content-length"] = str(len(body))
    event["headers"] = headers
    event.pop("multiValueHeaders", None)
    event.pop("multiValueQueryStringParameters", None)
    event["queryStringParameters"] = dict(case.query) or None
    if "rawQueryString" in event:
        event["rawQueryString"] = urlencode(case.query)
    if case.event_body is not None:
        event["body"] = case.event_body
        event["isBase64Encoded"] = True
    elif case.base64:
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True
    else:
        event["body"] = body.decode("utf-8", "surrogatepass")
        event["isBase64Encoded"] = False
    return event


_TEMPLATES: dict[str, dict[str, Any]] = {}


def _template(name: str) -> dict[str, Any]:
    if name not in _TEMPLATES:
        _TEMPLATES[name] = json.loads((EVENTS / f"{name}.json").read_text())
    return _TEMPLATES[name]


def _status_kb(field: str) -> int:
    """A size line of /proc/self/status (``VmRSS``, ``VmSize``), in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _rss_kb() -> int:
    return _status_kb("VmRSS")


def _vm_bytes() -> int:
    return _status_kb("VmSize") * 1024


@dataclass
class Runner:
    """A warmed-up parent that forks one child per case.

    Attributes:
        handler: the Lambda handler (``lambda_func.lambda_handler``).
        log_stream: sets where the handler's logger writes and returns the previous stream
            (the child collects the log to name the exception behind a 500).
        limits: per-case limits.
        listener: a socket on 127.0.0.1 that URL cases point at; any connection it accepts
            means the address policy let a request through.
    """

    handler: Handler
    log_stream: Callable[[Any], Any]
    limits: Limits = field(default_factory=Limits)
    listener: socket.socket | None = None

    def warm_up(self, cases: Iterable[Case]) -> None:
        """Answers ``cases`` in this process, so that children inherit a warm environment.

        Only image and JSON-image cases belong here: a URL case would start the resolver's
        threads in the parent, and a fork does not copy threads.
        """
        previous = self.log_stream(io.StringIO())
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                for case in cases:
                    self.handler(build_event(case, case.read()), _context(case))
        finally:
            self.log_stream(previous)

    def run(self, case: Case) -> Result:
        """Runs one case in a forked child and returns what became of it."""
        body_size = case.size()
        parent_rss_kb = _rss_kb()
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            self._child(case, write_fd)
        os.close(write_fd)
        output, timed_out = _read_until(read_fd, started + self.limits.wall_seconds)
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        os.close(read_fd)
        result = Result(
            name=case.name,
            group=case.group,
            fmt=case.format(),
            size=body_size,
            outcome=ANSWERED,
            seconds=round(time.monotonic() - started, 4),
            cpu_seconds=round(usage.ru_utime + usage.ru_stime, 4),
            expected=list(case.expect) if case.expect else None,
        )
        start = _first_json_line(output) or {"rss_kb": 0}
        result.peak_rss_mb = round((parent_rss_kb + usage.ru_maxrss - start["rss_kb"]) / 1024, 1)
        report = _last_json_line(output)
        if timed_out:
            result.outcome, result.detail = HANG, f"over {self.limits.wall_seconds} s of wall time"
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                result.outcome = HANG
                result.detail = f"over {self.limits.cpu_seconds} s of CPU time"
            elif sig == signal.SIGKILL:
                result.outcome, result.detail = OOM, "killed (SIGKILL): the kernel's OOM killer"
            else:
                result.outcome, result.detail = CRASH, f"killed by {signal.Signals(sig).name}"
        elif report is None:
            result.outcome = CRASH
            result.detail = f"exit status {os.WEXITSTATUS(status)}: {output[-300:]!r}"
        else:
            result.status, result.code = report["status"], report["code"]
            result.seconds = report["seconds"]
            result.detail = report.get("detail", "")
            if report["status"] >= 500:
                memory = "MemoryError" in result.detail
                result.outcome = OOM if memory else SERVER_ERROR
        return result

    def run_all(self, cases: Iterable[Case]) -> Iterator[Result]:
        """Runs the cases one after the other."""
        for case in cases:
            yield self.run(case)

    def connections_seen(self) -> int:
        """Connections the URL listener accepted (each one a request that should not exist)."""
        if self.listener is None:
            return 0
        seen = 0
        self.listener.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                conn, _ = self.listener.accept()
                conn.close()
                seen += 1
        return seen

    def _child(self, case: Case, write_fd: int) -> None:
        """The forked child: sets its limits, answers the case, reports, exits."""
        code = 0
        os.write(write_fd, (json.dumps({"rss_kb": _rss_kb()}) + "\n").encode())
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            cpu = self.limits.cpu_seconds
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            budget = _vm_bytes() + self.limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
            # C libraries' messages (libjpeg warnings, ...) would interleave with the report.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            log = io.StringIO()
            self.log_stream(log)
            sys.stdout = io.StringIO()  # the metrics flush prints here
            event = build_event(case, case.read())
            started = time.perf_counter()
            response = self.handler(event, _context(case))
            seconds = time.perf_counter() - started
            report = {
                "status": response["statusCode"],
                "code": _answer_code(response),
                "seconds": round(seconds, 4),
                "detail": _logged_exception(log.getvalue())
                if response["statusCode"] >= 500
                else "",
            }
        except BaseException as exc:  # noqa: BLE001 - the child reports anything, then exits
            report = {
                "status": 0,
                "code": "",
                "seconds": 0.0,
                "detail": "".join(traceback.format_exception_only(exc)).strip()[-300:],
            }
            code = 3
        try:
            os.write(write_fd, (json.dumps(report) + "\n").encode())
        finally:
            os._exit(code)


def _context(case: Case) -> SimpleNamespace:
    return SimpleNamespace(aws_request_id=f"fuzz-{case.name}", function_name="PredictFunction")


def _read_until(fd: int, deadline: float) -> tuple[str, bool]:
    """Reads the child's report until it closes the pipe; (text, timed out)."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks).decode(errors="replace"), True
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode(errors="replace"), False
            chunks.append(chunk)


def _first_json_line(text: str) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError, IndexError):
        value = json.loads(text.splitlines()[0])
        return value if isinstance(value, dict) and "rss_kb" in value else None
    return None


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and value.get("status"):
                return value
    return None


def _answer_code(response: dict[str, Any]) -> str:
    """The error code of an answer; for a batch, its items' statuses (``"200x3 413x5"``)."""
    try:
        body = json.loads(response.get("body") or "{}")
    except ValueError:
        return "(not JSON)"
    if isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    if isinstance(body.get("results"), list):
        counts: dict[str, int] = {}
        for item in body["results"]:
            key = str(item.get("status", 200))
            if "error" in item:
                key += f" {item['error'].get('code')}"
            counts[key] = counts.get(key, 0) + 1
        return "batch: " + ", ".join(f"{n}x {k}" for k, n in sorted(counts.items()))
    return ""


def _logged_exception(log: str) -> str:
    """The exception the handler logged with its 500 (Powertools' JSON lines)."""
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("exception"):
                name = record.get("exception_name", "")
                return f"{name}: {record['exception'].strip().splitlines()[-1]}"[-400:]
    return ""


def resident_mb() -> float:
    """This process's resident set now (the parent's, before a fork: the baseline)."""
    return _rss_kb() / 1024
