"""A tiny SVG writer for the HTML report: escaped text and attributes, compact numbers. Stdlib only."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def esc(value: object) -> str:
    """Text for HTML or XML: escaped, and without the characters XML forbids."""
    return html.escape(_NOT_XML.sub("\ufffd", str(value)), quote=True)


def num(v: float) -> str:
    """A coordinate or rate: whole numbers without a decimal point."""
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


class Svg:
    """A tiny SVG writer; attribute names take `_` for `-` and a trailing `_` for keywords (class_)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    @staticmethod
    def _attrs(attrs: dict[str, object]) -> str:
        out = []
        for k, v in attrs.items():
            if v is not None:
                value = num(v) if isinstance(v, float | int) and not isinstance(v, bool) else v
                out.append(f' {k.rstrip("_").replace("_", "-")}="{esc(value)}"')
        return "".join(out)

    def add(self, tag: str, text: str | None = None, title: str | None = None, /, **attrs: object) -> None:
        inner = (f"<title>{esc(title)}</title>" if title else "") + (esc(text) if text is not None else "")
        self.parts.append(f"<{tag}{self._attrs(attrs)}>{inner}</{tag}>" if inner else f"<{tag}{self._attrs(attrs)}/>")

    def open(self, tag: str, title: str | None = None, /, **attrs: object) -> None:
        self.parts.append(f"<{tag}{self._attrs(attrs)}>" + (f"<title>{esc(title)}</title>" if title else ""))

    def close(self, tag: str) -> None:
        self.parts.append(f"</{tag}>")

    def line(self, x1: float, y1: float, x2: float, y2: float, **attrs: object) -> None:
        self.add("line", x1=round(x1, 1), y1=round(y1, 1), x2=round(x2, 1), y2=round(y2, 1), **attrs)

    def text(self, x: float, y: float, text: str, title: str | None = None, /, **attrs: object) -> None:
        self.add("text", text, title, x=round(x, 1), y=round(y, 1), **attrs)

    def polyline(self, points: Iterable[tuple[float, float]], **attrs: object) -> None:
        self.add("polyline", points=" ".join(f"{x:.1f},{y:.1f}" for x, y in points), **attrs)

    def render(self, width: float, height: float, **attrs: object) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {num(width)} {num(height)}"'
                f'{self._attrs(attrs)} font-family="system-ui, sans-serif" font-size="12">')
        return head + "".join(self.parts) + "</svg>"
