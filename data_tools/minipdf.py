"""Write tiny PDFs by hand (raw PDF syntax, Helvetica): fixtures for tests, examples and benchmarks.

    write_text_pdf("two-pages.pdf", [["Title", "first page text"], ["second page"]])
    write_text_pdf("glued.pdf", pages, glued=True)     # words lose their spaces in pypdf's default mode
    write_image_pdf("scan.pdf", pages=2)               # images, no text layer

``unicode_offset=-29`` gives the pages in ``offset_pages`` (1-based; default all) a font whose
``ToUnicode`` map sends every code ``c`` to ``c - 29``: the glyphs still show "The", extractors read
"7KH" (the shifted-glyph failure of some DocBook manuals); ``unicode_offset=0xE000`` maps them to
private-use code points instead.

``glued=True`` draws each line the way TeX drivers do (one ``TJ`` array of words separated by
negative offsets, no space glyph) with a font whose space is declared 1.5 em wide, which reproduces
the "Hereareafewbasicmethods" extraction failure.
"""

from __future__ import annotations

import os
import zlib

from .files import atomic_write


def _escape(text: str) -> str:
    raw = text.encode("cp1252", errors="replace").decode("latin-1")
    return raw.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _pdf(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _stream(data: bytes, extra: str = "") -> bytes:
    return f"<< /Length {len(data)}{extra} >>\nstream\n".encode() + data + b"\nendstream"


def _to_unicode_cmap(offset: int) -> bytes:
    """A ToUnicode CMap mapping each one-byte code c (33-255) to c + offset; the space stays a space
    (TeX fonts have no space glyph, so extractors find word gaps the same way in the real case)."""
    pairs = [(32, 32)] + [(c, c + offset) for c in range(33, 256) if 0 < c + offset < 0x110000]
    lines = [
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Shifted def /CMapType 2 def",
        "1 begincodespacerange <00> <FF> endcodespacerange",
    ]
    for start in range(0, len(pairs), 100):  # a bfchar block holds at most 100 entries
        chunk = pairs[start : start + 100]
        lines.append(f"{len(chunk)} beginbfchar")
        lines += [f"<{c:02X}> <{u:04X}>" for c, u in chunk]
        lines.append("endbfchar")
    lines.append("endcmap CMapName currentdict /CMap defineresource pop end end")
    return _stream("\n".join(lines).encode())


def text_pdf_bytes(
    pages: list[list[str]],
    *,
    glued: bool = False,
    font_size: float = 11,
    unicode_offset: int = 0,
    offset_pages: list[int] | None = None,
) -> bytes:
    """PDF bytes with one page per list of lines (Letter size, 14 pt leading); see the module doc
    for ``glued``, ``unicode_offset`` and ``offset_pages``."""
    font = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding"
    if glued:
        # every glyph 0.5 em, the space 1.5 em: pypdf then needs a 0.75 em gap to see a space
        font += " /FirstChar 32 /LastChar 255 /Widths [1500" + " 500" * 223 + "]"
    n = len(pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode(),
        (font + " >>").encode(),
    ]
    shifted = set(range(1, n + 1) if offset_pages is None else offset_pages) if unicode_offset else set()
    cmap_ref = ""
    if shifted:  # objects 4 + 2n (the shifted font) and 5 + 2n (its CMap) follow the pages
        cmap_ref = f"{4 + 2 * n} 0 R"
    for i, lines in enumerate(pages):
        ops = [f"BT /F1 {font_size} Tf 72 740 Td 14 TL"]
        for line in lines:
            if glued:
                words = line.split()
                ops.append("[" + " -280 ".join(f"({_escape(w)})" for w in words) + "] TJ T*")
            else:
                ops.append(f"({_escape(line)}) Tj T*")
        ops.append("ET")
        font_ref = cmap_ref if i + 1 in shifted else "3 0 R"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font_ref} >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(_stream("\n".join(ops).encode("latin-1")))
    if shifted:
        objects.append(f"{font} /ToUnicode {5 + 2 * n} 0 R >>".encode())
        objects.append(_to_unicode_cmap(unicode_offset))
    return _pdf(objects)


def write_text_pdf(path: str | os.PathLike, pages: list[list[str]], **options) -> str:
    """Write ``text_pdf_bytes(pages, **options)`` to ``path``; returns the path."""
    atomic_write(path, text_pdf_bytes(pages, **options))
    return os.fspath(path)


def image_pdf_bytes(pages: int = 1) -> bytes:
    """PDF bytes whose pages each show a small gray image and carry no text (like a scan)."""
    pixels = zlib.compress(bytes(range(0, 256, 4)) * 64)  # 64x64 gray ramp
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(pages))}] /Count {pages} >>".encode(),
        _stream(
            pixels,
            " /Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceGray "
            "/BitsPerComponent 8 /Filter /FlateDecode",
        ),
    ]
    for i in range(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /XObject << /Im1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(_stream(b"q 468 0 0 648 72 72 cm /Im1 Do Q"))
    return _pdf(objects)


def write_image_pdf(path: str | os.PathLike, pages: int = 1) -> str:
    atomic_write(path, image_pdf_bytes(pages))
    return os.fspath(path)
