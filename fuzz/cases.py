"""The cases: real-world odd files, seeded mutations of them, and hostile inputs made by code.

A ``Case`` is one ``POST /predict`` request: a body, its Content-Type, a query string and the
event it travels in. Groups:

- ``corpus``: the image test files of the pinned Pillow release, sent as they are (files the
  project did not make: odd modes, bit depths, broken headers, other formats);
- ``mutation:<kind>``: seeded mutations of the corpus's JPEG/PNG/GIF/WebP/BMP files (truncation,
  flipped bytes, header dimensions that lie, two files spliced);
- ``hostile``: files made byte by byte (``fuzz.craft``) or by Pillow to cost the most a limit
  admits or to go past it: scans, chunks, canvases, palettes with transparency, bad metadata;
- ``batch``: ``{"images": [...]}`` requests of large images;
- ``request``: malformed requests: data URLs, ``top_k`` / ``model_version`` of every odd kind,
  broken JSON and multipart bodies, Content-Types that lie, events whose base64 is not;
- ``url``: URLs that must never be fetched (loopback in every spelling, metadata, credentials).

``expect`` is the (status, code) a case must get when the answer is known in advance (``code``
None: any); the others only have to be answered (no 5xx, no crash, no hang).
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fuzz import craft
from imgclf.errors import ServiceError
from imgclf.preprocess import decoded_bytes
from imgclf.settings import ImageLimits

Expect = tuple[int, str | None]
OK: Expect = (200, None)


@dataclass(frozen=True)
class Case:
    """One request.

    Attributes:
        name: unique, ``group/what``.
        group: see the module docstring.
        body: the request body (or None: read from ``path``).
        path: a file holding the body.
        content_type: the Content-Type header (None: no header).
        query: query-string parameters.
        event: the event of ``events/`` the request travels in.
        base64: the event carries the body base64-encoded (else as text).
        event_body: sent verbatim as the event's base64 body (to send base64 that is not).
        fmt: the image format, for the memory table ("" : sniffed from the body).
        expect: the (status, code) the answer must have, when known.
    """

    name: str
    group: str
    body: bytes | None = None
    path: Path | None = None
    content_type: str | None = "application/octet-stream"
    query: Mapping[str, str] = field(default_factory=dict)
    event: str = "predict_http_api_jpeg"
    base64: bool = True
    event_body: str | None = None
    fmt: str = ""
    expect: Expect | None = None

    def read(self) -> bytes:
        """The body's bytes."""
        if self.body is not None:
            return self.body
        assert self.path is not None, self.name
        return self.path.read_bytes()

    def size(self) -> int:
        """The body's size in bytes."""
        if self.body is not None:
            return len(self.body)
        return self.path.stat().st_size if self.path else 0

    def format(self) -> str:
        """The image format (``fmt``, else sniffed from the first bytes)."""
        if self.fmt:
            return self.fmt
        if self.body is not None:
            head = self.body[:16]
        elif self.path is not None:
            with self.path.open("rb") as f:
                head = f.read(16)
        else:
            head = b""
        return sniff(head)

    def to_json(self) -> dict[str, object]:
        """The case without its body (the manifest of a generated run)."""
        return {
            "name": self.name,
            "group": self.group,
            "path": str(self.path) if self.path else None,
            "content_type": self.content_type,
            "query": dict(self.query),
            "event": self.event,
            "base64": self.base64,
            "event_body": self.event_body,
            "fmt": self.fmt,
            "expect": list(self.expect) if self.expect else None,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, object]) -> Case:
        """The inverse of ``to_json``."""
        expect = value.get("expect")
        return cls(
            name=str(value["name"]),
            group=str(value["group"]),
            path=Path(str(value["path"])) if value.get("path") else None,
            content_type=value.get("content_type"),  # type: ignore[arg-type]
            query=dict(value.get("query") or {}),  # type: ignore[call-overload]
            event=str(value["event"]),
            base64=bool(value["base64"]),
            event_body=value.get("event_body"),  # type: ignore[arg-type]
            fmt=str(value.get("fmt") or ""),
            expect=(expect[0], expect[1]) if isinstance(expect, list) else None,
        )


def sniff(head: bytes) -> str:
    """The image format of a file from its first bytes ("other" when none of ours)."""
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"GIF8"):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    return "other"


MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
}


def _image(name: str, data: bytes, expect: Expect | None, group: str = "hostile") -> Case:
    fmt = sniff(data[:16])
    return Case(
        name=f"{group}/{name}",
        group=group,
        body=data,
        content_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
        expect=expect,
    )


def _pillow(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def largest_admitted(make: Callable[[int], bytes], limits: ImageLimits, side: int) -> int:
    """The largest square side up to ``side`` whose image ``MAX_DECODED_BYTES`` admits."""
    while side > 16:
        try:
            if decoded_bytes(make(side), 224, 224, limits) <= limits.max_decoded_bytes:
                return side
        except ServiceError:
            pass
        # The estimate grows with the area: aim just under the limit, then check again.
        estimate = decoded_bytes(make(256), 224, 224, limits) / 256**2
        side = min(side - 8, int((limits.max_decoded_bytes / estimate) ** 0.5) - 2)
    return side


def _at_and_over(
    name: str, make: Callable[[int], bytes], limits: ImageLimits, side: int
) -> Iterator[Case]:
    """The file at the largest size the decoded-bytes limit admits (up to ``side``), and at
    ``side`` when that is over it: the dearest admitted case of its kind, and the first refused."""
    admitted = largest_admitted(make, limits, side)
    yield _image(f"{name}-{admitted}x{admitted}", make(admitted), OK)
    if admitted < side:
        yield _image(f"{name}-{side}x{side}", make(side), (422, "decoded_too_large"))


def small_jpeg(size: tuple[int, int] = (64, 48), **params: object) -> bytes:
    """A small real JPEG (a gradient) for wrapping in metadata and requests."""
    w, h = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.putpixel((w // 2, h // 2), (255, 0, 0))
    return _pillow(image, "JPEG", **params)


def small_png(size: tuple[int, int] = (64, 48)) -> bytes:
    return _pillow(Image.linear_gradient("L").resize(size).convert("RGB"), "PNG")


# ---- hostile files ------------------------------------------------------------------------------
def hostile_cases(limits: ImageLimits, *, full: bool) -> Iterator[Case]:
    """Files made to cost the most a limit admits, or to go past it.

    Args:
        limits: the limits the run's handler uses (cases at and just past each one).
        full: the full sizes (40 MP images, the issue's files); else small ones that still
            cross every limit (the test suite's subset).

    Yields:
        The cases.
    """
    big = 6300 if full else 640  # 6300 x 6300 = 39.7 MP, just under MAX_IMAGE_PIXELS' 40 MP
    over = int(limits.max_pixels**0.5) + 64
    scans, chunks = limits.max_jpeg_scans, limits.max_image_chunks
    jpeg, png = small_jpeg(), small_png()

    # JPEG: scans (libjpeg walks every block once per scan), markers, metadata, dimensions.
    yield from _at_and_over(
        f"jpeg-scans-{scans}", lambda n: craft.progressive_jpeg(n, n, scans), limits, big
    )
    yield _image(
        f"jpeg-scans-{scans + 1}-64x64",
        craft.progressive_jpeg(64, 64, scans + 1),
        (422, "too_many_scans"),
    )
    if full:  # the robustness run's files
        for w, n in ((6300, 5000), (1024, 300_000), (512, 100_000)):
            yield _image(
                f"jpeg-scans-{n}-{w}x{w}", craft.progressive_jpeg(w, w, n), (422, "too_many_scans")
            )
    yield _image(
        f"jpeg-markers-{chunks + 1}",
        craft.jpeg_with_segments(jpeg, chunks + 1),
        (422, "too_many_chunks"),
    )
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")
    for label, stray in (("zero", b"\x00"), ("fill", b"\xff")):
        yield _image(
            f"jpeg-stray-{label}-bytes-{chunks + 1}",
            jpeg[:app0_end] + stray * (chunks + 1) + jpeg[app0_end:],
            (422, "too_many_chunks"),
        )
    if full:
        yield _image(
            "jpeg-stray-fill-bytes-4000000",
            jpeg[:app0_end] + b"\xff" * 4_000_000 + jpeg[app0_end:],
            (422, "too_many_chunks"),
        )
        yield _image(
            "jpeg-markers-1000000",
            craft.jpeg_with_segments(jpeg, 1_000_000),
            (422, "too_many_chunks"),
        )
    yield _image("jpeg-exif-garbage", craft.jpeg_with_app1(jpeg, b"Exif\0\0" + b"\xa5" * 300), OK)
    yield _image(
        "jpeg-exif-truncated-ifd",
        craft.jpeg_with_app1(jpeg, b"Exif\0\0MM\0*\0\0\0\x08\xff\xff\x01\x12"),
        OK,
    )
    for value in (6, 8, 0, 99, 65535):
        exif = b"Exif\0\0" + craft.exif_orientation(value)
        yield _image(f"jpeg-exif-orientation-{value}", craft.jpeg_with_app1(jpeg, exif), OK)
    for w, h in ((over, over), (65535, 65535), (65535, 1)):
        lie = craft.jpeg_with_size(jpeg, w, h)
        yield _image(f"jpeg-sof-{w}x{h}", lie, (422, "image_too_large" if h > 1 else None))
    yield _image("jpeg-8x8", craft.progressive_jpeg(8, 8, 1), (422, "image_too_small"))
    grey = Image.new("RGB", (big, big), (120, 130, 140))
    yield _image(f"jpeg-baseline-{big}x{big}", _pillow(grey, "JPEG", quality=90), OK)
    del grey
    for label, mode, params in (
        ("progressive-444", "RGB", {"subsampling": 0}),
        ("progressive-420", "RGB", {"subsampling": 2}),
        ("progressive-cmyk", "CMYK", {}),
    ):

        def jpeg_of(n: int, mode: str = mode, params: dict[str, int] = params) -> bytes:
            return _pillow(Image.new(mode, (n, n), 90), "JPEG", progressive=True, **params)

        yield from _at_and_over(f"jpeg-{label}", jpeg_of, limits, big)

    # PNG: every colour type, Paeth-filtered (the dearest to undo), at the largest size admitted.
    for label, color_type, depth, interlace in (
        ("grey1", 0, 1, False),
        ("grey8", 0, 8, False),
        ("grey16", 0, 16, False),
        ("rgb8", 2, 8, False),
        ("rgb8-interlaced", 2, 8, True),
        ("rgb16", 2, 16, False),
        ("grey-alpha8", 4, 8, False),
        ("rgba8", 6, 8, False),
        ("rgba16", 6, 16, False),
        ("rgba16-interlaced", 6, 16, True),
    ):

        def png_of(n: int, ct: int = color_type, d: int = depth, i: bool = interlace) -> bytes:
            return craft.png_flat(n, n, ct, bit_depth=d, interlace=i, row_filter=4)

        yield from _at_and_over(f"png-{label}-paeth", png_of, limits, big)
    yield from _at_and_over(
        "png-palette-trns", lambda n: craft.png_palette_transparent(n, n), limits, big
    )
    palette = craft.png_chunk(b"PLTE", bytes(range(256)) * 3)
    yield from _at_and_over(
        "png-palette", lambda n: craft.png_flat(n, n, 3, extra=palette), limits, big
    )
    yield _image(f"png-{over}x{over}", craft.png_flat(over, over, 0), (422, "image_too_large"))
    lie = craft.png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    yield _image("png-ihdr-100000x100000", png[:8] + lie + png[33:], (422, "image_too_large"))
    junk = craft.png_chunk(b"prVt", b"")
    yield _image(
        f"png-chunks-{chunks + 1}",
        craft.png_insert(png, junk * (chunks + 1)),
        (422, "too_many_chunks"),
    )
    yield _image(
        f"png-chunks-after-idat-{chunks + 1}",
        craft.png_insert(png, junk * (chunks + 1), after_idat=True),
        (422, "too_many_chunks"),
    )
    if full:
        yield _image(
            "png-chunks-370000", craft.png_insert(png, junk * 370_000), (422, "too_many_chunks")
        )
    yield _image(
        "png-exif-garbage", craft.png_insert(png, craft.png_chunk(b"eXIf", b"\xa5" * 64)), OK
    )
    yield _image(
        "png-exif-garbage-after-idat",
        craft.png_insert(png, craft.png_chunk(b"eXIf", b"MM\0*garbage"), after_idat=True),
        OK,
    )
    yield _image(
        "png-exif-orientation-6",
        craft.png_insert(png, craft.png_chunk(b"eXIf", craft.exif_orientation(6))),
        OK,
    )
    yield _image(
        "png-itxt-garbage",
        craft.png_insert(
            png, craft.png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\x01\0\0\0" + b"\xa5" * 50)
        ),
        OK,
    )
    yield _image(
        "png-iccp-bomb",
        craft.png_insert(
            png, craft.png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(50_000_000), 9))
        ),
        None,
    )
    idat_bomb = craft.png_chunk(b"IDAT", zlib.compress(bytes(100_000_000), 9))
    yield _image("png-idat-bomb-64x48", png[: png.index(b"IDAT") - 4] + idat_bomb + png[-12:], None)

    # WebP: libwebp decodes a canvas (two of them for animations), whatever the frames.
    yield from _at_and_over(
        "webp-lossless", lambda n: craft.webp_lossless_constant(n, n), limits, big
    )
    yield from _at_and_over(
        "webp-animated-canvas", lambda n: craft.webp_animated((n, n), (16, 16)), limits, big
    )
    if full:
        n = largest_admitted(lambda n: craft.webp_lossless_constant(n, n), limits, big)
        lossy = _pillow(Image.new("RGB", (n, n), (90, 160, 200)), "WEBP", quality=50, method=0)
        yield _image(f"webp-lossy-{n}x{n}", lossy, OK)
    yield _image("webp-animated-1000-frames", craft.webp_animated((64, 64), (64, 64), 1000), OK)
    yield _image(
        "webp-canvas-16384x16384",
        craft.webp_animated((16384, 16384), (16, 16)),
        (422, "image_too_large"),
    )
    yield _image("webp-exif-garbage", _webp_with_exif(b"\xa5" * 64), OK)

    # GIF: the logical screen is the canvas; only the first frame is decoded.
    yield _image(f"gif-{big}x{big}", craft.gif((big, big), (big, big)), OK)
    yield _image(f"gif-screen-{big}x{big}-frame-16x16", craft.gif((big, big), (16, 16)), OK)
    yield _image(
        f"gif-transparent-{big}x{big}", craft.gif((big, big), (big, big), transparent=True), OK
    )
    yield _image("gif-frames-5000", craft.gif((64, 64), (64, 64), frames=5000), OK)
    yield _image(f"gif-{over}x{over}", craft.gif((over, over), (16, 16)), (422, "image_too_large"))
    yield _image(
        f"gif-comment-blocks-{chunks + 1}",
        craft.gif((64, 64), (64, 64), extensions=craft.gif_comment_blocks(chunks + 1)),
        (422, "too_many_chunks"),
    )
    gif_head = craft.gif((64, 64), (64, 64))
    yield _image(
        f"gif-stray-bytes-{chunks + 1}",
        gif_head[:19] + bytes(chunks + 1) + gif_head[19:],
        (422, "too_many_chunks"),
    )
    if full:
        yield _image(
            "gif-stray-bytes-4000000",
            gif_head[:19] + bytes(4_000_000) + gif_head[19:],
            (422, "too_many_chunks"),
        )
        yield _image(
            "gif-comment-blocks-1400000",
            craft.gif((64, 64), (64, 64), extensions=craft.gif_comment_blocks(1_400_000)),
            (422, "too_many_chunks"),
        )

    # Formats outside the allow-list: naming one must not mean parsing all of it.
    lines = 1_100_000 if full else 25_000
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n" + b"%%a\n" * lines
    yield _image(f"eps-{len(eps) // 1000}kB-of-comments", eps, None)
    entries = struct.pack("<HHII", 0x100, 3, 1, 16) * 65535
    tiff = b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 65535) + entries + bytes(4)
    yield _image("tiff-65535-ifd-entries", tiff, None)

    # BMP: RLE is decoded in Python by Pillow; uncompressed is plain.
    yield _image(
        f"bmp-rle8-row-ends-{big}x{big}",
        craft.bmp_rle8_row_ends(big, big),
        (415, "unsupported_media_type"),
    )
    side = 5000 if full else big
    yield _image(
        f"bmp-1bit-{side}x{int(side * 1.4)}",
        _pillow(Image.new("1", (side, int(side * 1.4))), "BMP"),
        OK,
    )
    bmp = _pillow(Image.new("RGB", (32, 32)), "BMP")
    yield _image(
        "bmp-header-100000x100000",
        bmp[:18] + struct.pack("<ii", 100_000, 100_000) + bmp[26:],
        (422, "image_too_large"),
    )


def _webp_with_exif(exif: bytes) -> bytes:
    """A small animated WebP (VP8X) with an EXIF chunk."""
    data = craft.webp_animated((64, 64), (64, 64), 1)
    chunk = b"EXIF" + struct.pack("<I", len(exif)) + exif + (b"\0" if len(exif) % 2 else b"")
    vp8x_flags = data[20] | 0x08
    body = data[12:20] + bytes([vp8x_flags]) + data[21:] + chunk
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


# ---- batches ------------------------------------------------------------------------------------
def batch_cases(limits: ImageLimits, max_batch: int, *, full: bool) -> Iterator[Case]:
    """``{"images": [...]}`` requests that only the per-request budget bounds.

    Each batch is the dearest image of its kind that MAX_DECODED_BYTES admits, then (when it
    leaves room for one) a smaller one that spends what MAX_BATCH_DECODED_BYTES leaves, then more
    of the first: the rest are refused with 413 (``batch_decoded_too_large``).

    Args:
        limits: the limits.
        max_batch: the most items a batch may hold.
        full: the largest images, else small ones (all answered).
    """
    side = 6300 if full else 500
    kinds: dict[str, Callable[[int], bytes]] = {
        "png-rgba16-interlaced-paeth": lambda n: craft.png_flat(
            n, n, 6, bit_depth=16, interlace=True, row_filter=4
        ),
        "png-rgb8-paeth": lambda n: craft.png_flat(n, n, 2, row_filter=4),
        "png-palette-trns": lambda n: craft.png_palette_transparent(n, n),
        "jpeg-scans": lambda n: craft.progressive_jpeg(n, n, limits.max_jpeg_scans),
        "webp-lossless": lambda n: craft.webp_lossless_constant(n, n),
        "gif": lambda n: craft.gif((n, n), (n, n)),
    }
    for label, make in kinds.items():
        first = largest_admitted(make, limits, side)
        items = [make(first)]
        expect: Expect = (200, f"batch: {max_batch}x 200")
        if full:
            left = limits.max_batch_decoded_bytes - decoded_bytes(items[0], 224, 224, limits)
            second = largest_admitted(make, ImageLimits(max_decoded_bytes=left), first)
            if second >= 64:  # what the budget leaves, spent by a smaller one
                items.append(make(second))
            refused = max_batch - len(items)
            expect = (200, f"batch: {len(items)}x 200, {refused}x 413 batch_decoded_too_large")
        items += [items[0]] * (max_batch - len(items))
        yield Case(
            name=f"batch/{max_batch}x-{label}-{first}x{first}",
            group="batch",
            body=json.dumps({"images": [base64.b64encode(i).decode() for i in items]}).encode(),
            content_type="application/json",
            fmt=f"batch {label.split('-')[0].upper()}",
            expect=expect,
        )
    small = base64.b64encode(small_jpeg()).decode()
    yield _json_case(
        f"batch/{max_batch}x-small-jpeg",
        {"images": [small] * max_batch},
        (200, f"batch: {max_batch}x 200"),
        group="batch",
    )


# ---- requests -----------------------------------------------------------------------------------
def _json_case(
    name: str,
    value: object,
    expect: Expect | None,
    *,
    group: str = "request",
    query: Mapping[str, str] | None = None,
    raw: bytes | None = None,
) -> Case:
    body = raw if raw is not None else json.dumps(value).encode()
    return Case(
        name=name,
        group=group,
        body=body,
        content_type="application/json",
        query=query or {},
        fmt="json",
        expect=expect,
    )


def request_cases() -> Iterator[Case]:
    """Malformed requests of every kind: each must be a 4xx (or a 200), never a 500."""
    jpeg = small_jpeg()
    b64 = base64.b64encode(jpeg).decode()
    bad_param = (400, "invalid_parameter")

    # data URLs
    for label, text, expect in (
        ("no-comma", "data:image/jpeg;base64", (400, "invalid_base64")),
        ("empty", "data:", (400, "invalid_base64")),
        ("only-comma", "data:,", (422, "invalid_image")),
        ("not-base64", "data:image/png;base64,!!!!", (400, "invalid_base64")),
        ("valid", f"data:image/jpeg;base64,{b64}", OK),
        ("upper-case-scheme", f"DATA:image/jpeg;base64,{b64}", OK),
        ("two-commas", f"data:image/jpeg;base64,{b64},{b64}", (400, "invalid_base64")),
    ):
        yield _json_case(f"request/data-url-{label}", {"image": text}, expect)

    # top_k and model_version, by query and by JSON
    odd = {
        "5000-digits": "9" * 5000,
        "superscript-two": "\u00b2",
        "arabic-indic-three": "\u0663",
        "fullwidth-three": "\uff13",
        "plus": "+3",
        "minus": "-1",
        "zero": "0",
        "space": " 3",
        "decimal": "3.0",
        "exponent": "1e3",
        "hex": "0x3",
        "empty": "",
        "nul": "3\x00",
        "5-digits": "10000",
    }
    for label, text in odd.items():
        yield Case(
            name=f"request/top_k-query-{label}",
            group="request",
            body=jpeg,
            content_type="image/jpeg",
            query={"top_k": text},
            fmt="JPEG",
            expect=bad_param,
        )
        yield _json_case(
            f"request/top_k-json-string-{label}", {"image": b64, "top_k": text}, bad_param
        )
    for label, text, expect in (
        ("leading-zero", "03", OK),
        ("4-digits", "9999", OK),
    ):
        yield Case(
            name=f"request/top_k-query-{label}",
            group="request",
            body=jpeg,
            content_type="image/jpeg",
            query={"top_k": text},
            fmt="JPEG",
            expect=expect,
        )
    huge = b'{"image": "' + b64.encode() + b'", "top_k": ' + b"9" * 4000 + b"}"
    yield _json_case("request/top_k-json-4000-digits", None, bad_param, raw=huge)
    huge = b'{"image": "' + b64.encode() + b'", "top_k": ' + b"9" * 5000 + b"}"
    yield _json_case("request/top_k-json-5000-digits", None, (400, "invalid_json"), raw=huge)
    for label, value, expect in (
        ("float", 3.0, bad_param),
        ("exponent", 1e3, bad_param),
        ("true", True, bad_param),
        ("list", [3], bad_param),
        ("object", {"k": 3}, bad_param),
        ("negative", -1, bad_param),
        ("null", None, OK),
        ("string", "2", OK),
        ("int", 2, OK),
    ):
        yield _json_case(f"request/top_k-json-{label}", {"image": b64, "top_k": value}, expect)
    nan = b'{"image": "' + b64.encode() + b'", "top_k": NaN}'
    yield _json_case("request/top_k-json-nan", None, bad_param, raw=nan)
    for label, text, expect in (
        ("5000-digits", "9" * 5000, bad_param),
        ("arabic-indic", "\u0663", bad_param),
        ("65-chars", "a" * 65, bad_param),
        ("dot-dot", "../x", bad_param),
        ("newline", "0001\n", bad_param),
        ("unpublished", "0042", (404, "version_not_found")),
    ):
        yield Case(
            name=f"request/model_version-query-{label}",
            group="request",
            body=jpeg,
            content_type="image/jpeg",
            query={"model_version": text},
            fmt="JPEG",
            expect=expect,
        )
    big_version = b'{"image": "' + b64.encode() + b'", "model_version": ' + b"9" * 4000 + b"}"
    yield _json_case("request/model_version-json-4000-digits", None, bad_param, raw=big_version)
    for label, value, expect in (
        ("negative", -1, bad_param),
        ("float", 1.5, bad_param),
        ("list", ["0001"], bad_param),
        ("true", True, bad_param),
        ("int-unpublished", 42, (404, "version_not_found")),
    ):
        yield _json_case(
            f"request/model_version-json-{label}", {"image": b64, "model_version": value}, expect
        )

    # JSON bodies
    for label, raw, expect in (
        ("truncated", b'{"image": "', (400, "invalid_json")),
        ("array", b"[]", (400, "invalid_json")),
        ("string", b'"image"', (400, "invalid_json")),
        ("nested-100000", b"[" * 100_000, (400, "invalid_json")),
        ("nested-value-100000", b'{"image": ' + b"[" * 100_000, (400, "invalid_json")),
        ("invalid-utf8", b'{"image": "\xff\xfe"}', (400, "invalid_json")),
        ("bom", b'\xef\xbb\xbf{"image": "AA=="}', (422, "invalid_image")),  # json takes a BOM
        ("lone-surrogate", b'{"image": "\\ud800"}', (400, "invalid_base64")),
        ("image-number", b'{"image": 1}', bad_param),
        ("image-null", b'{"image": null}', bad_param),
        ("url-number", b'{"url": 5}', bad_param),
        ("two-kinds", b'{"url": "http://a/", "image": "AA=="}', (400, "bad_request")),
        ("none", b'{"top_k": 3}', (400, "bad_request")),
        ("unknown-field", b'{"image": "AA==", "x": 1}', bad_param),
        ("images-empty", b'{"images": []}', (400, "bad_request")),
        ("images-not-list", b'{"images": "AA=="}', (400, "bad_request")),
        ("images-numbers", b'{"images": [1, 2]}', (200, "batch: 2x 400 invalid_parameter")),
        ("images-nine", json.dumps({"images": ["AA=="] * 9}).encode(), (413, "batch_too_large")),
        ("images-mixed", json.dumps({"images": [b64, "!!", "", None]}).encode(), None),
        ("empty-body", b"", (400, "invalid_json")),
    ):
        yield _json_case(f"request/json-{label}", None, expect, raw=raw)

    # multipart bodies
    boundary = "fuzzboundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    good = part + jpeg + f"\r\n--{boundary}--\r\n".encode()
    multipart = f"multipart/form-data; boundary={boundary}"
    for label, body, content_type, expect in (
        ("good", good, multipart, OK),
        ("no-boundary", good, "multipart/form-data", (400, "invalid_multipart")),
        ("other-boundary", good, "multipart/form-data; boundary=other", (400, "invalid_multipart")),
        (
            "no-final-boundary",
            good[: -len(f"--{boundary}--\r\n")],
            multipart,
            (400, "invalid_multipart"),
        ),
        ("truncated", good[: len(good) // 2], multipart, (400, "invalid_multipart")),
        ("empty", b"", multipart, (400, "invalid_multipart")),
        (
            "other-field",
            good.replace(b'name="file"', b'name="photo"'),
            multipart,
            (400, "invalid_multipart"),
        ),
        (
            "header-100kB",
            part[:-4]
            + b"\r\nX-Long: "
            + b"a" * 100_000
            + b"\r\n\r\n"
            + jpeg
            + f"\r\n--{boundary}--\r\n".encode(),
            multipart,
            None,
        ),
        (
            "unicode-boundary",
            good,
            "multipart/form-data; boundary=\u00e9\u00e9",
            (400, "invalid_multipart"),
        ),
        ("two-files", part + jpeg + b"\r\n" + good, multipart, OK),
        (
            "tiff-file",
            part + _pillow(Image.new("RGB", (32, 32)), "TIFF") + f"\r\n--{boundary}--\r\n".encode(),
            multipart,
            (415, "unsupported_media_type"),
        ),
        ("garbage", b"\x00\xff" * 1000, multipart, (400, "invalid_multipart")),
    ):
        yield Case(
            name=f"request/multipart-{label}",
            group="request",
            body=body,
            content_type=content_type,
            fmt="multipart",
            expect=expect,
        )

    # Content-Types and events
    png = small_png()
    for label, body, content_type, expect in (
        ("png-declared-jpeg", png, "image/jpeg", OK),
        ("jpeg-declared-octet-stream", jpeg, "application/octet-stream", OK),
        ("jpeg-with-parameters", jpeg, "image/jpeg; charset=binary", OK),
        ("jpeg-upper-case", jpeg, "IMAGE/JPEG", OK),
        ("jpeg-as-text-plain", jpeg, "text/plain", (415, "unsupported_media_type")),
        ("jpeg-no-content-type", jpeg, None, (415, "unsupported_media_type")),
        ("jpeg-as-json", jpeg, "application/json", (400, "invalid_json")),
        ("jpeg-as-multipart", jpeg, "multipart/form-data", (400, "invalid_multipart")),
        (
            "tiff-as-jpeg",
            _pillow(Image.new("RGB", (32, 32)), "TIFF"),
            "image/jpeg",
            (415, "unsupported_media_type"),
        ),
        ("text-as-jpeg", b"hello, world", "image/jpeg", (422, "invalid_image")),
        ("empty-as-jpeg", b"", "image/jpeg", (422, "invalid_image")),
    ):
        yield Case(
            name=f"request/content-type-{label}",
            group="request",
            body=body,
            content_type=content_type,
            fmt=sniff(body[:16]) if body else "other",
            expect=expect,
        )
    for event in ("predict_rest_api_jpeg", "predict_function_url_png"):
        yield Case(
            name=f"request/event-{event}",
            group="request",
            body=jpeg,
            content_type="image/jpeg",
            event=event,
            fmt="JPEG",
            expect=OK,
        )
        yield Case(
            name=f"request/event-{event}-base64-not",
            group="request",
            body=jpeg,
            content_type="image/jpeg",
            event=event,
            event_body="!!not base64!!",
            fmt="JPEG",
            expect=(400, "invalid_base64"),
        )
    yield Case(
        name="request/event-body-text-not-base64",
        group="request",
        body=b'{"image": "' + b64.encode() + b'"}',
        content_type="application/json",
        base64=False,
        fmt="json",
        expect=OK,
    )


def url_cases(port: int) -> Iterator[Case]:
    """URLs that must be refused before any connection (a listener on ``port`` counts them)."""
    refused = (400, "url_not_allowed")
    invalid = (400, "invalid_url")
    for label, url, expect in (
        ("loopback", f"http://127.0.0.1:{port}/x.jpg", refused),
        ("loopback-trailing-dot", f"http://127.0.0.1.:{port}/x.jpg", refused),
        ("loopback-two-trailing-dots", f"http://127.0.0.1..:{port}/x.jpg", None),
        ("loopback-short", f"http://127.1:{port}/x.jpg", refused),
        ("loopback-hex", f"http://0x7f000001:{port}/x.jpg", refused),
        ("loopback-decimal", f"http://2130706433:{port}/x.jpg", refused),
        ("loopback-octal", f"http://0177.0.0.1:{port}/x.jpg", refused),
        ("localhost", f"http://localhost:{port}/x.jpg", refused),
        ("localhost-trailing-dot", f"http://localhost.:{port}/x.jpg", refused),
        ("ipv6-loopback", f"http://[::1]:{port}/x.jpg", refused),
        ("ipv4-mapped", f"http://[::ffff:127.0.0.1]:{port}/x.jpg", refused),
        ("unspecified", f"http://0:{port}/x.jpg", refused),
        ("metadata", "http://169.254.169.254/latest/meta-data/", refused),
        ("metadata-trailing-dot", "http://169.254.169.254./latest/meta-data/", refused),
        ("credentials", f"http://user:pw@127.0.0.1:{port}/x.jpg", invalid),
        ("file", "file:///etc/passwd", invalid),
        ("gopher", f"gopher://127.0.0.1:{port}/", invalid),
        ("header-injection", f"http://127.0.0.1:{port}/x\r\nX-Injected: 1", invalid),
        ("no-host", "http:///x.jpg", invalid),
        ("port-out-of-range", "http://127.0.0.1:99999/", invalid),
    ):
        yield _json_case(f"url/{label}", {"url": url}, expect, group="url")
    urls = [f"http://127.0.0.1.:{port}/{i}.jpg" for i in range(8)]
    yield _json_case(
        "url/batch-8-loopback", {"urls": urls}, (200, "batch: 8x 400 url_not_allowed"), group="url"
    )


# ---- the corpus and its mutations ---------------------------------------------------------------
def _lie_about_size(data: bytes, rng: random.Random) -> bytes | None:
    """``data`` with its header's dimensions replaced (PNG's CRC kept right), or None."""
    w, h = rng.choice([(65535, 65535), (1, 1), (0, 7), (30000, 2000), (70000, 70000)])
    fmt = sniff(data[:16])
    out = bytearray(data)
    if fmt == "PNG" and len(data) >= 33:
        out[16:24] = struct.pack(">II", w, h)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif fmt == "GIF" and len(data) >= 10:
        out[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    elif fmt == "BMP" and len(data) >= 26:
        out[18:26] = struct.pack("<ii", w, h)
    elif fmt == "JPEG":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            at = data.find(marker)
            if at >= 0 and at + 9 <= len(data):
                out[at + 5 : at + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
                break
        else:
            return None
    elif fmt == "WEBP" and len(data) >= 30 and data[12:16] == b"VP8X":
        out[24:30] = ((w - 1) & 0xFFFFFF).to_bytes(3, "little") + ((h - 1) & 0xFFFFFF).to_bytes(
            3, "little"
        )
    else:
        return None
    return bytes(out)


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        # Half the flips land in the header, where a decoder makes its decisions.
        limit = min(len(out), 64) if rng.random() < 0.5 else len(out)
        at = rng.randrange(limit)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, max(2, len(data)))]


def _repeat(data: bytes, rng: random.Random) -> bytes:
    """A slice of the file repeated many times in place (chunks, markers, blocks twice over)."""
    start = rng.randrange(len(data))
    piece = data[start : start + rng.randint(1, 64)]
    return data[:start] + piece * rng.randint(2, 2000) + data[start:]


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes | None]] = {
    "truncate": _truncate,
    "flip": _flip,
    "header-lie": _lie_about_size,
    "repeat": _repeat,
}


def mutate(name: str, data: bytes, seed: int, others: list[bytes]) -> Iterator[Case]:
    """The seeded mutations of one image: each mutation once, plus a splice with another file.

    Args:
        name: the file's name (part of each case's name and of its seed).
        data: the file's bytes.
        seed: the run's seed.
        others: other files to splice this one with.
    """
    for kind, mutation in MUTATIONS.items():
        rng = random.Random(f"{seed}:{kind}:{name}")
        mutated = mutation(data, rng)
        if mutated is not None:
            yield _image(f"{kind}:{name}", mutated, None, group=f"mutation:{kind}")
    if others:
        rng = random.Random(f"{seed}:splice:{name}")
        other = rng.choice(others)
        spliced = data[: rng.randrange(1, max(2, len(data)))] + other[rng.randrange(len(other)) :]
        yield _image(f"splice:{name}", spliced, None, group="mutation:splice")


def small_mutations(seed: int) -> Iterator[Case]:
    """Seeded mutations of small files made here (the test suite has no corpus)."""
    files = {
        "gradient.jpg": small_jpeg(),
        "progressive.jpg": small_jpeg(progressive=True),
        "gradient.png": small_png(),
        "palette.gif": craft.gif((64, 48), (64, 48), transparent=True),
        "animated.webp": craft.webp_animated((64, 48), (64, 48), 3),
        "lossless.webp": craft.webp_lossless_constant(64, 48),
        "rgb.bmp": _pillow(Image.new("RGB", (64, 48), (1, 2, 3)), "BMP"),
    }
    others = list(files.values())
    for name, data in files.items():
        yield from mutate(name, data, seed, others)


def corpus_cases(folder: Path, seed: int) -> Iterator[Case]:
    """Every file of the corpus as it is, and mutations of those in an allowed format.

    Args:
        folder: the extracted ``Tests/images`` folder.
        seed: the run's seed.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = {}
    for path in files:
        name = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        fmt = sniff(data[:16])
        yield _image(name, data, None, group="corpus")
        if fmt != "other" and len(data) <= 1_000_000:
            images[name] = data
    pool = list(images.values())
    for name, data in images.items():
        yield from mutate(name, data, seed, pool)


def warm_up_cases() -> list[Case]:
    """One small request down each path (every allowed format, a refused one, JSON, multipart),
    for the parent to answer before any fork: lazy imports and first-call setup are then paid
    once, not in every child."""
    jpeg = small_jpeg()
    made = [
        _image(name, data, OK, group="warm")
        for name, data in (
            ("jpeg", jpeg),
            ("png", small_png()),
            ("gif", craft.gif((64, 48), (64, 48), transparent=True)),
            ("webp", craft.webp_animated((64, 48), (64, 48), 1)),
            ("bmp", _pillow(Image.new("RGB", (64, 48)), "BMP")),
        )
    ]
    made.append(_image("tiff", _pillow(Image.new("RGB", (64, 48)), "TIFF"), None, group="warm"))
    made.append(_json_case("warm/json", {"image": base64.b64encode(jpeg).decode()}, OK))
    made += [c for c in request_cases() if c.name == "request/multipart-good"]
    return made
