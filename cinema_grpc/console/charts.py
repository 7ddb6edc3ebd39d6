"""Server-rendered SVG bar charts for the reports screen (no chart library, no script). Each
chart has a title for screen readers, and the page shows the same figures in a table."""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH = 640
BAR = 22
GAP = 8
LABEL_WIDTH = 180


def horizontal_bars(title: str, items: list[tuple[str, float, str]]) -> Markup:
    """One bar per (label, value, value text), longest first as given."""
    if not items:
        return Markup("")
    top = max(value for _, value, _ in items) or 1
    height = len(items) * (BAR + GAP) + GAP
    room = WIDTH - LABEL_WIDTH - 180  # leaves space for the value text after the longest bar
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for i, (label, value, text) in enumerate(items):
        y = GAP + i * (BAR + GAP)
        width = max(1.0, room * value / top)
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + BAR * 0.7}" text-anchor="end" class="chart-label">'
            f"{escape(label[:28])}</text>"
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR}" class="chart-bar"/>'
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + BAR * 0.7}" class="chart-value">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def vertical_bars(title: str, items: list[tuple[str, float, str]]) -> Markup:
    """One column per (label, value, value text), in the order given (days)."""
    if not items:
        return Markup("")
    top = max(value for _, value, _ in items) or 1
    plot, base = 180, 200
    step = max(14.0, (WIDTH - 20) / len(items))
    width = 20 + step * len(items)
    column = step * 0.7
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width:.0f} {base + 40}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f'<line x1="10" y1="{base}" x2="{width - 10:.0f}" y2="{base}" class="chart-axis"/>'
    ]
    for i, (label, value, text) in enumerate(items):
        x = 10 + i * step + (step - column) / 2
        h = max(1.0, plot * value / top) if value else 0.0
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{column:.1f}" height="{h:.1f}" class="chart-bar">'
            f"<title>{escape(label)}: {escape(text)}</title></rect>"
            f'<text x="{x + column / 2:.1f}" y="{base + 16}" text-anchor="middle" class="chart-label">'
            f"{escape(label)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bar(title: str, parts_: list[tuple[str, float, str]]) -> Markup:
    """One bar split into (name, percent, css class) parts, each also named in text."""
    pieces = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} 60" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    x = 0.0
    for name, percent, css in parts_:
        width = WIDTH * percent / 100
        if width <= 0:
            continue
        pieces.append(f'<rect x="{x:.1f}" y="4" width="{width:.1f}" height="30" class="{escape(css)}"/>')
        if width > 60:
            pieces.append(f'<text x="{x + 4:.1f}" y="52" class="chart-label">{escape(name)} {percent:.0f}%</text>')
        x += width
    pieces.append("</svg>")
    return Markup("".join(pieces))
