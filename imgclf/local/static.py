"""A tiny static file server on loopback, so URL inputs work with no internet.

The local stack serves the sample images with it; ``{"url": "http://127.0.0.1:3001/seg_pred/0.jpg"}``
then exercises the predict function's URL download path (PRIVATE_URL_ENDPOINTS allows exactly
this server's address and port).
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # One line per image fetch would drown the stack's own output under load.
        pass


class StaticServer:
    """Serves one directory over HTTP from a background thread."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:3001``."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Starts serving."""
        self.thread.start()

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
