"""Charts as static SVG, drawn on the server from the same rows the CSV gives.

Why server-side SVG rather than a JavaScript charting library: the page needs no script at
all (the Content-Security-Policy forbids every script), the plot arrives in the first
response (one request per page; a few kB gzipped on a slow link), it prints and saves as it
is, there is nothing to vendor, audit or upgrade, and the tests read every drawn value
straight from the markup (``data-*`` attributes). Charts here are few and fixed, so a
plotting library's interactivity buys little; a ``<title>`` on every mark gives its number
on hover.

Colours: a sequential blue for counts and quality (Okabe-Ito-safe: it does not rely on
red/green), orange for "below what the protocol accepts", and a sequential orange for how
often it was (the quality page's share of best frames not captured: light for rare, dark
for often, and only where clearly above the district's share; chance is a muted grey), grey
for "no data"; hatching, a texture, for "not heard" and "too few to judge" (it prints, and
needs no colour vision).
"""

from __future__ import annotations

import unicodedata
from html import escape

from central.dashboard import config as C

FONT = 11
BLUES = ["#deebf7", "#9ecae1", "#6baed6", "#3182bd", "#08519c"]
ORANGE = "#e6550d"
# ColorBrewer's 6-class Oranges (Brewer, colorbrewer2.org): one hue, light to dark, so the
# order reads without colour vision and in greyscale print; its fifth is ORANGE.
ORANGES = ["#feedde", "#fdd0a2", "#fdae6b", "#fd8d3c", ORANGE, "#a63603"]
GREY = "#d9d9d9"
INK = "#222"
MUTED = "#666"


def esc(value) -> str:
    return escape(str(value), quote=True)


def attrs(**kw) -> str:
    """SVG/HTML attributes, escaped; data_x -> data-x; None values left out."""
    return " ".join(f'{k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in kw.items()
                    if v is not None)


class Svg:
    def __init__(self, width: int, height: int, title: str, chart: str, **data):
        self.w, self.h = width, height
        # width/height in px: the plot keeps its size and a phone scrolls it sideways rather
        # than shrink its text below reading size
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
                      f'width="{width}" height="{height}" '
                      f'{attrs(role="img", class_="chart", data_chart=chart, **data)} '
                      f'font-family="system-ui, sans-serif" font-size="{FONT}">',
                      f"<title>{esc(title)}</title>"]

    def add(self, text: str) -> None:
        self.parts.append(text)

    def hatch(self, pattern_id: str, gap: float, ink: str = MUTED) -> str:
        """White hatched with diagonal lines `gap` apart, defined in this drawing; returns
        its fill. The id must be unique in the page (an inline SVG's ids are the page's)."""
        self.parts.append(
            f'<defs><pattern {attrs(id=pattern_id, width=_n(gap), height=_n(gap))} '
            f'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
            f'<rect {attrs(width=_n(gap), height=_n(gap), fill="#fff")}/>'
            f'<line {attrs(x1=_n(gap / 2), y1=0, x2=_n(gap / 2), y2=_n(gap), stroke=ink)}/>'
            "</pattern></defs>")
        return f"url(#{pattern_id})"

    def rect(self, x, y, w, h, fill, tip: str | None = None, **data) -> None:
        inner = f"<title>{esc(tip)}</title>" if tip else ""
        a = attrs(x=_n(x), y=_n(y), width=_n(w), height=_n(h), fill=fill, **data)
        self.parts.append(f"<rect {a}>{inner}</rect>")

    def text(self, x, y, s, anchor: str = "start", fill: str = INK, size: int | None = None,
             weight: str | None = None, tip: str | None = None, href: str | None = None,
             **data) -> None:
        """`href`: the text is a link (a clinic's name to its page; no script needed)."""
        a = attrs(x=_n(x), y=_n(y), text_anchor=anchor, fill=fill, font_size=size,
                  font_weight=weight, **data)
        inner = f"<title>{esc(tip)}</title>" if tip else ""
        text = f"<text {a}>{inner}{esc(s)}</text>"
        self.parts.append(f'<a href="{esc(href)}">{text}</a>' if href else text)

    def line(self, x1, y1, x2, y2, stroke: str = MUTED, width: float = 1,
             dash: str | None = None) -> None:
        a = attrs(x1=_n(x1), y1=_n(y1), x2=_n(x2), y2=_n(y2), stroke=stroke,
                  stroke_width=width, stroke_dasharray=dash)
        self.parts.append(f"<line {a}/>")

    def polyline(self, points, stroke: str, width: float = 1.5, dash: str | None = None,
                 fill: str = "none", **data) -> None:
        pts = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
        a = attrs(points=pts, fill=fill, stroke=stroke, stroke_width=width,
                  stroke_dasharray=dash, **data)
        self.parts.append(f"<polyline {a}/>")

    def polygon(self, points, fill: str, opacity: float = 1.0, **data) -> None:
        pts = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
        a = attrs(points=pts, fill=fill, fill_opacity=opacity, **data)
        self.parts.append(f"<polygon {a}/>")

    def circle(self, x, y, r, fill, tip: str | None = None, stroke: str | None = None,
               **data) -> None:
        inner = f"<title>{esc(tip)}</title>" if tip else ""
        a = attrs(cx=_n(x), cy=_n(y), r=r, fill=fill, stroke=stroke, **data)
        self.parts.append(f"<circle {a}>{inner}</circle>")

    def rects(self, boxes: list[tuple[float, float, float, float]], fill: str,
              stroke: str | None = None) -> None:
        """Many rectangles of one colour as one path, each a relative move and four strokes:
        about 15 bytes where a ``<rect>`` with its title took 230. For a plot of thousands of
        cells, whose words are given once per row and in a table beside it."""
        if boxes:
            self.parts.append(f"<path {attrs(fill=fill, stroke=stroke)} "
                              f'd="{_path(boxes, _box)}"/>')

    def dots(self, centres: list[tuple[float, float]], r: float, fill: str,
             stroke: str | None = None) -> None:
        """Many circles of one colour as one path (as ``rects``)."""
        if centres:
            self.parts.append(f"<path {attrs(fill=fill, stroke=stroke)} d=\""
                              + _path([(x - r, y, r) for x, y in centres], _dot) + '"/>')

    def done(self) -> str:
        return "\n".join(self.parts + ["</svg>"])


def _path(shapes: list[tuple], draw) -> str:
    """Subpaths, each placed by a move relative to the start of the one before (where a
    closed subpath leaves the pen): short numbers, and the rounding never adds up."""
    out, px, py = [], 0.0, 0.0
    for i, (x, y, *size) in enumerate(shapes):
        x, y = round(x, 1), round(y, 1)
        out.append(f"M{_n(x)} {_n(y)}" if i == 0 else f"m{_n(x - px)} {_n(y - py)}")
        out.append(draw(*size))
        px, py = x, y
    return "".join(out)


def _box(w: float, h: float) -> str:
    return f"h{_n(w)}v{_n(h)}h{_n(-w)}z"


def _dot(r: float) -> str:
    return f"a{_n(r)} {_n(r)} 0 1 0 {_n(2 * r)} 0a{_n(r)} {_n(r)} 0 1 0 {_n(-2 * r)} 0z"


def _n(v) -> str:
    """Coordinates with at most one decimal: smaller markup, no visible difference."""
    return f"{v:.1f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def bin_colour(value: float, edges: list[float], colours: list[str] = BLUES) -> str:
    """The colour of the first bin whose upper edge is above value."""
    for edge, colour in zip(edges, colours, strict=False):
        if value < edge:
            return colour
    return colours[len(edges)] if len(edges) < len(colours) else colours[-1]


def legend(svg: Svg, x: float, y: float, items: list[tuple[str, str]], box: int = 10,
           measured: bool = False) -> float:
    """Colour swatches with labels in one row; returns the x after the last. A white or
    patterned swatch is outlined, as its cells are. `measured`: each label spaced by its
    estimated width (`text_width`), not 6.2 px a character, which ran labels of digits and
    "%" ("15-20%") into the next swatch."""
    for colour, label in items:
        outlined = colour == "#fff" or colour.startswith("url(")
        svg.rect(x, y - box + 1, box, box, colour, stroke=INK if outlined else None)
        svg.text(x + box + 4, y, label, fill=MUTED)
        x += _legend_item_w(label, box, measured)
    return x


def legend_width(items: list[tuple[str, str]], box: int = 10, measured: bool = False
                 ) -> float:
    """The width `legend` takes for these items: a drawing must be at least that wide."""
    return sum(_legend_item_w(label, box, measured) for _, label in items)


def _legend_item_w(label: str, box: int, measured: bool = False) -> float:
    return box + 10 + (max(6.2 * len(label), text_width(label)) if measured
                       else 6.2 * len(label))


_EM = {ch: em for chars, em in C.TEXT_EM.items() for ch in chars}


def text_width(text: str, size: float = FONT) -> float:
    """The width `text` takes at `size` px, estimated (C.TEXT_EM) at least as wide as the
    widest common system font draws it: a column sized by it holds the text."""
    return size * sum(_EM.get(unicodedata.normalize("NFD", ch)[:1], C.TEXT_EM_OTHER)
                      for ch in text)


def fit_width(text: str, width: float, size: float = FONT) -> str:
    """`text`, or as much of it as fits `width` px with an ellipsis after it (the mark's
    title gives it whole)."""
    if text_width(text, size) <= width:
        return text
    room, used, cut = width - text_width("\u2026", size), 0.0, 0
    for ch in text:
        used += text_width(ch, size)
        if used > room:
            break
        cut += 1
    return text[:cut].rstrip() + "\u2026"


def hbars(title: str, chart: str, rows: list[dict], width: int = 760,
          label_w: int = 170, value_max: float = 1.0, percent: bool = True,
          row_h: int = 18, keys: list[tuple[str, str]] | None = None) -> str:
    """Horizontal bars. Each row: label, value (0..value_max), note (text after the bar),
    colour, title (the label in full, for the hover), href (the label a link) and data
    (attributes for the bar), the last four optional. The value is said again beside the
    label, before its bar: a phone shows the plot's left end, where every bar ran off the
    screen with its note (a full bar looked like any other; an officer's walk).

    A row may also split its bar (`parts`: each a share of the bar, its colour, its title
    and data, drawn over it from the left; the rest keeps the bar's colour) and say the
    split in words on a line under it (`sub`: a print or a phone has no hover); `keys`, a
    legend of the parts' colours under the plot."""
    value_w = 44
    bar_w = width - label_w - value_w - 150
    sub_h = 13 if any(r.get("sub") for r in rows) else 0
    line_h = row_h + sub_h
    h = 24 + line_h * max(1, len(rows)) + 20 + (14 if keys else 0)
    svg = Svg(width, h, title, chart)
    x0 = label_w + value_w
    axis_end = 20 + line_h * max(1, len(rows)) + 4
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + bar_w * frac
        svg.line(x, 16, x, axis_end, stroke="#eee")
        svg.text(x, 12, f"{frac * value_max:.0%}" if percent else f"{frac * value_max:g}",
                 anchor="middle", fill=MUTED)
    if not rows:
        svg.text(x0, 36, "no data in this period", fill=MUTED)
    for i, r in enumerate(rows):
        y = 20 + i * line_h
        svg.text(label_w - 6, y + row_h * 0.7, r["label"], anchor="end", tip=r.get("title"),
                 href=r.get("href"))
        value = r["value"]
        if value is not None:
            svg.text(x0 - 6, y + row_h * 0.7, f"{value:.0%}" if percent else f"{value:g}",
                     anchor="end", data_value_shown="")
        if value is None:
            svg.text(x0 + 4, y + row_h * 0.7, "no exams", fill=MUTED, **r.get("data", {}))
            continue
        w = bar_w * max(0.0, min(1.0, value / value_max)) if value_max else 0
        svg.rect(x0, y + 3, max(w, 1), row_h - 6, r.get("colour", BLUES[3]),
                 tip=f"{r.get('title', r['label'])}: {r.get('note', '')}",
                 **r.get("data", {}))
        x = x0
        for share, colour, tip, data in r.get("parts", ()):
            part = max(0.0, min(w * share, x0 + w - x))  # never past the bar's end
            if part > 0:
                svg.rect(x, y + 3, part, row_h - 6, colour, tip=tip, **data)
            x += part
        svg.text(x0 + w + 5, y + row_h * 0.7, r.get("note", ""), fill=MUTED)
        if r.get("sub"):
            svg.text(x0, y + row_h + 8, r["sub"], fill=MUTED, size=10)
    if keys:
        legend(svg, x0, h - 16, keys)
    return svg.done()
