"""A JPEG's marker structure, read without decoding a pixel: which images the device decoder may take.

nvJPEG (``decode_jpeg(device="cuda")``) does not check a stream the way libjpeg does: a JPEG whose
headers parse but whose tables or scan are damaged can come back as whatever the output memory
held, with no error, where PIL (the CPU path) refuses it with a reason. So only streams whose
structure is checked whole here go to the device: baseline 8-bit, one interleaved scan whose
components and Huffman/quantisation tables are all defined and well formed, restart markers (if
any) in sequence and as many as the image's MCUs need, and the scan ending in EOI at the end of
the file. Everything else goes to PIL, which decodes it as on the CPU path or gives its reason.
Damage inside the entropy-coded bits themselves cannot be seen without decoding; there libjpeg
also decodes without an error (it warns), so both paths score the image.
"""
from __future__ import annotations

import dataclasses
import re
import struct

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames
_BASELINE = 0xC0
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # not stuffing, not RSTn, not fill
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
#: Luma (h, v) sampling factors of the chroma subsamplings nvJPEG names (NVJPEG_CSS_444, 422, 420,
#: 440, 411, 410, 410V), with chroma at (1, 1); anything else goes to PIL.
_KNOWN_LUMA_SAMPLING = frozenset({(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (4, 2), (2, 4)})
_EOI_SLACK = 64  # bytes of trailing junk after EOI still accepted (as before: some encoders pad)


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers say before its first scan (parsed without decoding anything)."""

    width: int
    height: int
    components: int
    frame: int                 # SOF marker: 0xC0 baseline, 0xC2 progressive, ...
    precision: int             # bits per sample
    component_ids: tuple
    adobe_transform: int | None  # an Adobe APP14 segment's colour transform (0: none/RGB, 1: YCbCr, 2: YCCK)
    jfif: bool
    # the structure the device decoder relies on (None/empty when the stream stops before them)
    sampling: tuple = ()       # (h, v) per frame component
    quant_ids: tuple = ()      # quantisation table per frame component
    tables_ok: bool = False    # every DQT/DHT segment well formed (Huffman codes fit their lengths)
    dqt_ids: frozenset = frozenset()
    dc_ids: frozenset = frozenset()
    ac_ids: frozenset = frozenset()
    scan: tuple = ()           # (component id, dc table, ac table) of the first scan
    scan_start: int = -1       # offset of the first scan's entropy-coded data
    restart_interval: int = 0


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Parse the markers of ``data`` up to its first scan; None if it is not a well-formed JPEG
    start. A few microseconds per image, where PIL's ``Image.open`` takes ~60 (issue 14)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end, adobe, jfif, frame = 2, len(data), None, False, None
    tables_ok, dqt, dc, ac, restart = True, set(), set(), set(), 0
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return _finish(frame, tables_ok, dqt, dc, ac, (), -1, restart, adobe, jfif)
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        body = pos + 4
        if length < 2 or body + length - 2 > end:
            return _finish(frame, tables_ok, dqt, dc, ac, (), -1, restart, adobe, jfif)
        segment = data[body:body + length - 2]
        if marker == 0xE0 and segment.startswith(b"JFIF\0"):
            jfif = True
        elif marker == 0xEE and segment.startswith(b"Adobe") and length >= 14:
            adobe = segment[11]
        elif marker == 0xDB:
            tables_ok = _read_dqt(segment, dqt) and tables_ok
        elif marker == 0xC4:
            tables_ok = _read_dht(segment, dc, ac) and tables_ok
        elif marker == 0xDD and len(segment) >= 2:
            restart = struct.unpack_from(">H", segment)[0]
        elif marker in _SOF_MARKERS and frame is None:
            if length < 8:
                return None
            frame = (marker, segment)
        elif marker == 0xDA:
            if frame is None:  # a scan before any frame header
                return None
            count = segment[0] if segment else 0
            scan = tuple((segment[1 + 2 * i], segment[2 + 2 * i] >> 4, segment[2 + 2 * i] & 15)
                         for i in range(count) if 2 + 2 * i < len(segment))
            return _finish(frame, tables_ok, dqt, dc, ac, scan, body + length - 2, restart, adobe, jfif)
        pos = body + length - 2
    return _finish(frame, tables_ok, dqt, dc, ac, (), -1, restart, adobe, jfif)


def _finish(frame, tables_ok, dqt, dc, ac, scan, scan_start, restart, adobe, jfif) -> JpegHeader | None:
    if frame is None:
        return None
    marker, seg = frame
    precision, height, width, count = struct.unpack_from(">BHHB", seg)
    parts = [seg[6 + 3 * i:9 + 3 * i] for i in range(count)]
    parts = [p for p in parts if len(p) == 3]
    return JpegHeader(width, height, count, marker, precision, tuple(p[0] for p in parts), adobe, jfif,
                      sampling=tuple((p[1] >> 4, p[1] & 15) for p in parts),
                      quant_ids=tuple(p[2] for p in parts), tables_ok=tables_ok, dqt_ids=frozenset(dqt),
                      dc_ids=frozenset(dc), ac_ids=frozenset(ac), scan=scan, scan_start=scan_start,
                      restart_interval=restart)


def _read_dqt(seg: bytes, ids: set) -> bool:
    pos = 0
    while pos < len(seg):
        precision, table = seg[pos] >> 4, seg[pos] & 15
        size = 64 * (precision + 1)
        values = seg[pos + 1:pos + 1 + size]
        if precision > 1 or table > 3 or len(values) != size:
            return False
        if precision == 0 and 0 in values or precision == 1 and 0 in struct.unpack(f">{64}H", values):
            return False  # a zero quantiser (libjpeg refuses it)
        ids.add(table)
        pos += 1 + size
    return True


def _read_dht(seg: bytes, dc: set, ac: set) -> bool:
    pos = 0
    while pos < len(seg):
        klass, table = seg[pos] >> 4, seg[pos] & 15
        counts = seg[pos + 1:pos + 17]
        if klass > 1 or table > 3 or len(counts) != 16:
            return False
        total, code = sum(counts), 0
        for bits, n in enumerate(counts, start=1):  # the canonical codes must fit in their lengths
            code += n
            if code > (1 << bits):
                return False
            code <<= 1
        if total > 256 or pos + 17 + total > len(seg):
            return False
        (ac if klass else dc).add(table)
        pos += 17 + total
    return True


def device_decodable(header: JpegHeader | None, data: bytes) -> bool:
    """True when the device decoder may take ``data`` and give the pixels PIL gives: a complete,
    structurally whole baseline 8-bit JPEG, grayscale or YCbCr. (libjpeg reads 3 channels as RGB
    when an Adobe marker says "no transform" or, with no JFIF marker, the component ids are
    'R','G','B'; those go to PIL.)"""
    if header is None or header.frame != _BASELINE or header.precision != 8 or header.width * header.height == 0:
        return False
    if header.components == 3:
        if header.adobe_transform not in (None, 1) or (not header.jfif and header.component_ids == (82, 71, 66)):
            return False
    elif header.components != 1:
        return False  # CMYK/YCCK
    return _tables_and_scan_whole(header, data)


def _tables_and_scan_whole(header: JpegHeader, data: bytes) -> bool:
    ids = header.component_ids
    if (not header.tables_ok or header.scan_start < 0 or len(ids) != header.components
            or len(set(ids)) != len(ids) or not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in header.sampling)
            or not set(header.quant_ids) <= header.dqt_ids):
        return False
    if header.components == 3 and (header.sampling[0] not in _KNOWN_LUMA_SAMPLING
                                   or header.sampling[1:] != ((1, 1), (1, 1))):
        return False  # a chroma subsampling nvJPEG does not name (or more blocks than an MCU holds)
    scan = header.scan
    if len(scan) != header.components or [c for c, _, _ in scan] != list(ids):
        return False  # one interleaved scan of every component, in frame order
    if not all(d in header.dc_ids and a in header.ac_ids for _, d, a in scan):
        return False  # a table the scan names is not defined (libjpeg would fall back or refuse)
    found = _MARKER_IN_SCAN.search(data, header.scan_start)  # ~0.3 us per KB, in C
    if found is None or data[found.start() + 1] != 0xD9 or found.start() + 2 < len(data) - _EOI_SLACK:
        return False  # another scan, a stray marker, no EOI, or an EOI well before the end
    if header.restart_interval:
        h_max = max(h for h, _ in header.sampling)
        v_max = max(v for _, v in header.sampling)
        if header.components == 1:
            h_max = v_max = 1
        mcus = -(-header.width // (8 * h_max)) * -(-header.height // (8 * v_max))
        restarts = [data[m.start() + 1] for m in _RESTART.finditer(data, header.scan_start, found.start())]
        if len(restarts) != -(-mcus // header.restart_interval) - 1:
            return False
        if any(r != 0xD0 + i % 8 for i, r in enumerate(restarts)):
            return False
    return True
