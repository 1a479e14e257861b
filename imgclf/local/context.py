"""The Lambda context object the local gateway and bridge pass to a handler.

It carries the attributes the Lambda Python runtime provides and Powertools reads.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# moto's default account, so ARNs built here look like the ones moto returns.
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"

Handler = Callable[[dict[str, Any], Any], Any]
# How often a child of the local stack checks that the stack is still there.
PARENT_CHECK_SECONDS = 0.5


def die_with_parent() -> None:
    """Ends this process's whole group (its gunicorn workers, its retrain jobs) if its parent dies.

    The stack starts each child as the leader of a group of its own and stops them in order; a
    SIGKILL of the stack itself gives no chance to do that, so each child watches for it: its
    parent id changes when the parent is gone.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


@dataclass
class LambdaContext:
    """What ``context`` holds in a Lambda invocation: names, limits and the deadline."""

    function_name: str
    timeout_seconds: float
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds

    @property
    def invoked_function_arn(self) -> str:
        """The function ARN, as Lambda reports it."""
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        """The CloudWatch log group Lambda would write to."""
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        """A log stream name (one per local process is enough)."""
        return "local"

    def get_remaining_time_in_millis(self) -> int:
        """Returns the milliseconds left before the function times out.

        Returns:
            The remaining time, never negative.
        """
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def import_handler(path: str) -> Handler:
    """Imports a handler given as Lambda's ``Handler`` setting, ``module.function``.

    Args:
        path: dotted module path, a dot, then the function name (``lambda_func.lambda_handler``).

    Returns:
        The handler function.
    """
    module_name, _, function_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"handler must look like module.function, got {path!r}")
    return getattr(importlib.import_module(module_name), function_name)
