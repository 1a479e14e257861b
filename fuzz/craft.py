"""Hostile image files made byte by byte, each one small on the wire and costly to decode.

Pillow's encoders cannot make them: they write ten scans, not thousands; they do not put a
6300x6300 canvas around a 16x16 frame; they do not split a file into a million chunks. These
writers do, exactly and deterministically, so the fuzz run and the test suite make the same files.
Every file is valid as far as the format allows, so it reaches the decoder rather than the parser.
"""

from __future__ import annotations

import struct
import zlib


# ---- JPEG: progressive, any number of (empty) scans ---------------------------------------------
class _Bits:
    """Writes an entropy-coded segment: big-endian bits, 0xFF stuffed, padded with ones."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def put(self, code: int, length: int) -> None:
        self._acc = (self._acc << length) | code
        self._n += length
        while self._n >= 8:
            self._n -= 8
            byte = (self._acc >> self._n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
        self._acc &= (1 << self._n) - 1

    def zeros(self, count: int) -> None:
        """``count`` zero bits, fast (a DC scan of a big image is millions of them)."""
        while self._n and count:
            self.put(0, 1)
            count -= 1
        self.out += bytes(count // 8)
        self.put(0, count % 8) if count % 8 else None

    def finish(self) -> bytes:
        if self._n:
            self.put((1 << (8 - self._n)) - 1, 8 - self._n)
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def _dht(table_class: int, table_id: int, lengths: dict[int, list[int]]) -> bytes:
    """A Huffman table from {code length: symbols}; returns the segment."""
    counts = bytes(len(lengths.get(n, [])) for n in range(1, 17))
    symbols = bytes(s for n in range(1, 17) for s in lengths.get(n, []))
    return _segment(0xC4, bytes([table_class << 4 | table_id]) + counts + symbols)


# AC table: the end-of-band runs EOB0..EOB14 (symbols r << 4), 15 codes of 4 bits: 0000..1110.
_EOB_SYMBOLS = [r << 4 for r in range(15)]


def _eob_runs(blocks: int, bits: _Bits) -> None:
    """Codes ``blocks`` all-zero blocks of an AC first scan as end-of-band runs."""
    while blocks:
        run = min(blocks, 0x7FFF)
        r = run.bit_length() - 1  # EOBr covers 2^r .. 2^(r+1)-1 blocks
        bits.put(r, 4)  # the canonical code of symbol r << 4 is r itself
        if r:
            bits.put(run - (1 << r), r)
        blocks -= run


def progressive_jpeg(width: int, height: int, scans: int) -> bytes:
    """A grey progressive JPEG: ``width`` x ``height``, one DC scan, ``scans - 1`` AC scans.

    Every AC scan is a complete, valid first scan of coefficients 1..63 that codes all blocks as
    zero (a few bytes per scan, however large the image); the decoded image is mid-grey.

    Args:
        width: pixels across (at most 65535).
        height: pixels down (at most 65535).
        scans: the number of SOS markers in the file (at least 1).

    Returns:
        The encoded file.
    """
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    head = bytearray(b"\xff\xd8")
    head += _segment(0xDB, b"\x00" + bytes([1] * 64))  # one quantisation table, all ones
    # SOF2: 8-bit, height, width, one component (id 1, sampling 1x1, table 0).
    head += _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    head += _dht(0, 0, {1: [0]})  # DC: one symbol (difference category 0), code "0"
    head += _dht(1, 0, {4: _EOB_SYMBOLS})
    parts = [bytes(head)]
    # The DC first scan: one bit per block.
    dc = _Bits()
    dc.zeros(blocks)
    parts += [_segment(0xDA, b"\x01\x01\x00\x00\x00\x00"), dc.finish()]
    ac = _Bits()
    _eob_runs(blocks, ac)
    # Ss=1, Se=63, Ah=Al=0: every AC scan is the same few bytes.
    ac_scan = _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + ac.finish()
    parts.append(ac_scan * (scans - 1))
    parts.append(b"\xff\xd9")
    return b"".join(parts)


def jpeg_with_segments(jpeg: bytes, count: int, marker: int = 0xFE) -> bytes:
    """``jpeg`` with ``count`` empty marker segments (default: comments) right after SOI: Pillow
    reads each in Python before the first scan."""
    return jpeg[:2] + struct.pack(">HH", 0xFF00 | marker, 2) * count + jpeg[2:]


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` whose frame header (SOF0/1/2) claims ``width`` x ``height``."""
    at = min(i for i in (jpeg.find(m) for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")) if i >= 0)
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def jpeg_with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP1 segment (EXIF, when ``payload`` starts with ``Exif\\0\\0``)."""
    return jpeg[:2] + _segment(0xE1, payload[:65533]) + jpeg[2:]


# ---- PNG ----------------------------------------------------------------------------------------
def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_insert(png: bytes, chunks: bytes, *, after_idat: bool = False) -> bytes:
    """``png`` with ``chunks`` inserted after IHDR (or before IEND)."""
    at = png.rindex(b"IEND") - 4 if after_idat else 33  # 8 (signature) + 25 (IHDR)
    return png[:at] + chunks + png[at:]


# Adam7's passes: (x0, y0, dx, dy).
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def png_flat(
    width: int,
    height: int,
    color_type: int,
    *,
    bit_depth: int = 8,
    extra: bytes = b"",
    interlace: bool = False,
    row_filter: int = 0,
) -> bytes:
    """A PNG of one colour (all-zero samples) of any size, compressed as it streams: a 40 MP image
    costs a few hundred kilobytes and no 40 MP buffer to make.

    Args:
        width: pixels across.
        height: pixels down.
        color_type: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA.
        bit_depth: 1, 2, 4, 8 or 16 (as the colour type allows).
        extra: chunks put before IDAT (PLTE, tRNS, eXIf, ...).
        interlace: Adam7 (seven passes) instead of plain rows.
        row_filter: every row's filter type (4, Paeth, is the dearest to undo).

    Returns:
        The encoded file.
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    packer = zlib.compressobj(9)
    pieces = []
    for x0, y0, dx, dy in passes:
        pass_w, pass_h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pass_w <= 0 or pass_h <= 0:
            continue
        row = bytes([row_filter]) + bytes((pass_w * channels * bit_depth + 7) // 8)
        step = max(1, 4_000_000 // len(row))
        pieces += [packer.compress(row * min(step, pass_h - y)) for y in range(0, pass_h, step)]
    idat = b"".join(pieces) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_palette_transparent(width: int, height: int) -> bytes:
    """A palette PNG whose colour 0 is transparent (tRNS): decoded naively, it becomes RGBA."""
    palette = bytes(range(256)) * 3
    return png_flat(
        width,
        height,
        3,
        extra=png_chunk(b"PLTE", palette) + png_chunk(b"tRNS", b"\x00" + b"\xff" * 255),
    )


# ---- WebP ---------------------------------------------------------------------------------------
class _BitsLE:
    """VP8L's bit order: least significant bit first."""

    def __init__(self) -> None:
        self.value = 0
        self.n = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= value << self.n
        self.n += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.n + 7) // 8, "little")


def vp8l_constant(
    width: int, height: int, argb: tuple[int, int, int, int] = (255, 0, 0, 0)
) -> bytes:
    """A lossless WebP bitstream (VP8L) of ``width`` x ``height`` pixels of one colour in 13 bytes.

    Every one of the five prefix codes is a "simple" code with a single symbol, so a pixel takes
    no bits at all: the decoder still fills width x height x 4 bytes.
    """
    a, r, g, b = argb
    bits = _BitsLE()
    bits.put(0x2F, 8)  # signature
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(1, 1)  # alpha is used
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for symbol in (g, r, b, a, 0):  # green (+ lengths), red, blue, alpha, distance
        bits.put(1, 1)  # simple code
        bits.put(0, 1)  # one symbol
        bits.put(1, 1)  # of 8 bits
        bits.put(symbol, 8)
    return bits.bytes()


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def webp_lossless_constant(width: int, height: int) -> bytes:
    """A still lossless WebP of one colour: 34 bytes for 6300x6300."""
    return _riff(_riff_chunk(b"VP8L", vp8l_constant(width, height)))


def webp_animated(canvas: tuple[int, int], frame: tuple[int, int], frames: int = 2) -> bytes:
    """An animated WebP: a ``canvas`` (what libwebp allocates, twice) holding ``frames`` small
    lossless frames of ``frame`` size."""
    cw, ch = canvas
    vp8x = (
        struct.pack("<B3x", 0x02 | 0x10)
        + (cw - 1).to_bytes(3, "little")
        + (ch - 1).to_bytes(3, "little")
    )
    chunks = _riff_chunk(b"VP8X", vp8x) + _riff_chunk(b"ANIM", struct.pack("<IH", 0xFFFFFFFF, 0))
    fw, fh = frame
    bitstream = _riff_chunk(b"VP8L", vp8l_constant(fw, fh))
    for _ in range(frames):
        header = b"\0\0\0" * 2 + (fw - 1).to_bytes(3, "little") + (fh - 1).to_bytes(3, "little")
        header += (100).to_bytes(3, "little") + b"\x00"  # 100 ms, no blending, no disposal
        chunks += _riff_chunk(b"ANMF", header + bitstream)
    return _riff(chunks)


# ---- GIF ----------------------------------------------------------------------------------------
def _lzw_constant(pixels: int) -> bytes:
    """GIF LZW data (minimum code size 2) for ``pixels`` pixels of colour 0, in sub-blocks.

    A run of one colour is coded as strings of length 1, 2, 3, ... (each one the entry the
    decoder is just adding), so a 40 MP frame takes a few thousand codes.
    """
    clear, end = 4, 5
    bits = _BitsLE()
    size, next_code, first, length = 3, 6, True, 1
    bits.put(clear, size)
    remaining = pixels
    while remaining:
        if next_code >= 4093:  # the table is full: start again, as encoders do
            bits.put(clear, size)
            size, next_code, first, length = 3, 6, True, 1
        run = min(length, remaining)
        bits.put(0 if run == 1 else 6 + run - 2, size)
        if not first:
            next_code += 1
            if next_code == 1 << size and size < 12:
                size += 1
        first = False
        remaining -= run
        length = run + 1
    bits.put(end, size)
    data = bits.bytes()
    blocks = b"".join(
        bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255)
    )
    return b"\x02" + blocks + b"\x00"


def gif(
    screen: tuple[int, int],
    frame: tuple[int, int],
    *,
    extensions: bytes = b"",
    transparent: bool = False,
    frames: int = 1,
) -> bytes:
    """A GIF whose logical screen is ``screen`` and whose frames are ``frame`` of colour 0.

    Args:
        screen: the canvas Pillow allocates.
        frame: each frame's size (at the top left).
        extensions: raw extension blocks put before the first frame.
        transparent: colour 0 is transparent (a graphic control extension before each frame).
        frames: how many frames.
    """
    sw, sh = screen
    fw, fh = frame
    out = bytearray(
        b"GIF89a" + struct.pack("<HHBBB", sw, sh, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    )
    out += extensions
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, fw, fh, 0) + _lzw_constant(fw * fh)
    control = (
        b"\x21\xf9\x04\x01\x0a\x00\x00\x00" if transparent else b"\x21\xf9\x04\x00\x0a\x00\x00\x00"
    )
    out += (control + image) * frames
    out += b"\x3b"
    return bytes(out)


def gif_comment_blocks(count: int) -> bytes:
    """``count`` empty comment extensions: Pillow reads each in Python."""
    return b"\x21\xfe\x00" * count


# ---- BMP ----------------------------------------------------------------------------------------
def bmp_rle8(width: int, height: int, rows: bytes) -> bytes:
    """An 8-bit RLE BMP (grey palette) whose compressed data is ``rows``."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    return header + info + palette + rows


def bmp_rle8_row_ends(width: int, height: int) -> bytes:
    """One pixel then an end-of-line per row: Pillow pads every row pixel by pixel in Python."""
    return bmp_rle8(width, height, b"\x01\x05\x00\x00" * height + b"\x00\x01")


# ---- EXIF ---------------------------------------------------------------------------------------
def exif_orientation(value: int) -> bytes:
    """A big-endian TIFF header with one IFD entry: Orientation = ``value``."""
    return (
        b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, value, 0) + bytes(4)
    )
