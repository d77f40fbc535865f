"""Draw the cockpit's icons (web app manifest, home screen) without any imaging library.

.venv/bin/python scripts/gen_icons.py  -> src/agentfarm/web/static/icon*.png and icon.svg
The design: three field rows and a sun, in white on indigo.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

STATIC = Path(__file__).resolve().parents[1] / "src" / "agentfarm" / "web" / "static"
BG = (67, 56, 202)
FG = (255, 255, 255)
SUN = (253, 224, 71)

SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">
<rect width="64" height="64" rx="14" fill="#4338ca"/>
<circle cx="44" cy="20" r="8" fill="#fde047"/>
<rect x="10" y="32" width="44" height="5" rx="2.5" fill="#fff"/>
<rect x="10" y="41" width="44" height="5" rx="2.5" fill="#fff"/>
<rect x="10" y="50" width="44" height="5" rx="2.5" fill="#fff"/>
</svg>
"""


def pixel(x: float, y: float, *, rounded: bool) -> tuple[int, int, int, int]:
    """Colour at (x, y) in a 64x64 design space."""
    if rounded:
        r = 14.0
        cx = min(max(x, r), 64 - r)
        cy = min(max(y, r), 64 - r)
        if (x - cx) ** 2 + (y - cy) ** 2 > r * r:
            return (0, 0, 0, 0)
    if (x - 44) ** 2 + (y - 20) ** 2 <= 64:
        return (*SUN, 255)
    for top in (32, 41, 50):
        if 10 <= x <= 54 and top <= y <= top + 5:
            return (*FG, 255)
    return (*BG, 255)


def png(size: int, *, rounded: bool, inset: float = 0.0) -> bytes:
    rows = []
    scale = (64 + 2 * inset) / size
    for py in range(size):
        row = bytearray(b"\x00")
        for px in range(size):
            x = (px + 0.5) * scale - inset
            y = (py + 0.5) * scale - inset
            inside = 0 <= x <= 64 and 0 <= y <= 64
            row += bytes(pixel(x, y, rounded=rounded) if inside else (*BG, 255))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    data = zlib.compress(b"".join(rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def main() -> None:
    (STATIC / "icon.svg").write_text(SVG)
    (STATIC / "icon-192.png").write_bytes(png(192, rounded=True))
    (STATIC / "icon-512.png").write_bytes(png(512, rounded=True))
    # Maskable: full-bleed background, the design inside the 80 % safe zone.
    (STATIC / "icon-maskable-512.png").write_bytes(png(512, rounded=False, inset=8.0))


if __name__ == "__main__":
    main()
