"""The web console's files (``imgclf/serving/console/``), served by the predict function itself.

``GET /`` answers ``index.html`` and ``GET /console/{file}`` the page's scripts and style sheet:
the same files, from the same package, locally and in AWS (the serve image copies
``imgclf/serving/``). They are public: the page asks for a token only for what needs one. Only
the files of that folder are served, by name (no path reaches outside it), with an ETag so a
browser revalidates them cheaply (a 304 carries no body).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.errors import NotFound
from imgclf.serving.http import Raw, Request

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to this API, and to S3 for uploads (another
# origin: the data bucket's, hence http: and https: in connect-src); pasted image URLs and local
# files (blob:) are shown as images. No inline script or style, no framing.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data: http: https:",
        "connect-src 'self' http: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
COMMON_HEADERS = {
    # Revalidate every time (the ETag makes that a 304): a new deploy shows at once.
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@dataclass
class Console:
    """The console's files, read once per execution environment."""

    root: Path = CONSOLE_DIR
    _files: dict[str, tuple[bytes, str, str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for path in sorted(self.root.iterdir()):
            if path.is_file() and path.suffix in CONTENT_TYPES:
                data = path.read_bytes()
                etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
                self._files[path.name] = (data, CONTENT_TYPES[path.suffix], etag)

    @property
    def names(self) -> list[str]:
        """The files served (under ``/console/``; ``index.html`` also as ``/``)."""
        return sorted(self._files)

    def file(self, name: str, request: Request) -> Raw:
        """One file, or a 304 when the browser's copy is current.

        Raises:
            NotFound: no such file.
        """
        if name not in self._files:
            raise NotFound(f"no console file {name!r}")
        data, content_type, etag = self._files[name]
        headers = {**COMMON_HEADERS, "etag": etag}
        if name.endswith(".html"):
            headers["content-security-policy"] = CONTENT_SECURITY_POLICY
        if etag in request.headers.get("if-none-match", ""):
            return Raw(b"", content_type, headers, status=304)
        return Raw(data, content_type, headers)

    def index(self, request: Request) -> Raw:
        """``GET /``: the page."""
        return self.file(INDEX, request)

    def asset(self, request: Request) -> Raw:
        """``GET /console/{file}``: a script or style sheet of the page."""
        return self.file(request.path_params["file"], request)
