"""QR labels for the asset register: which box this is, and which commune hall it belongs to.

The QR code carries compact JSON (`{"tiepdan":1,"device":...,"commune":...,"hall":...}`), so a
phone or the register's scanner reads it without our software. The PNG is the bare code for
label printers; the SVG adds the same facts as text under it, for people.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import segno

SCALE = 8
BORDER = 4


@dataclass(frozen=True)
class Label:
    device: str
    commune: str
    hall: str
    province: str = ""

    def payload(self) -> str:
        data = {"tiepdan": 1, "device": self.device, "commune": self.commune,
                "hall": self.hall}
        if self.province:
            data["province"] = self.province
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def qr_code(label: Label) -> segno.QRCode:
    return segno.make(label.payload(), error="m", micro=False)


def svg_text(label: Label) -> str:
    qr = qr_code(label)
    size = qr.symbol_size(scale=SCALE, border=BORDER)[0]
    font, gap = 18, 8
    place = " · ".join(filter(None, (label.commune and f"commune {label.commune}",
                                     label.province)))
    lines = [label.device, label.hall, place]
    height = size + gap + len(lines) * (font + 6)
    code = qr.svg_inline(scale=SCALE, border=BORDER, dark="#000", light="#fff")
    bold = ' font-weight="bold"'
    texts = "\n".join(
        f'  <text x="{size / 2:g}" y="{size + gap + (i + 1) * (font + 6) - 6}" '
        f'font-size="{font if i == 0 else font - 4}" text-anchor="middle"'
        f'{bold if i == 0 else ""}>{escape(line)}</text>'
        for i, line in enumerate(lines))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{height}" '
        f'viewBox="0 0 {size} {height}" font-family="DejaVu Sans, Arial, sans-serif">\n'
        f'  <rect width="{size}" height="{height}" fill="#fff"/>\n'
        f"  {code}\n{texts}\n</svg>\n"
    )


def write_labels(directory: Path, label: Label) -> tuple[Path, Path]:
    """`<device>.png` and `<device>.svg` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{label.device}.png", directory / f"{label.device}.svg"
    buffer = io.BytesIO()
    qr_code(label).save(buffer, kind="png", scale=SCALE, border=BORDER)
    png.write_bytes(buffer.getvalue())
    svg.write_text(svg_text(label), encoding="utf-8")
    return png, svg
