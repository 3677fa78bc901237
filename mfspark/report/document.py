"""The report as data — sections of notes, tables and figures — and its two renderings.

One :class:`Section` list is rendered twice: :func:`render_html` (one self-contained page: CSS
inline, figures as inline SVG, no script and no reference to any other file or address) and
:func:`render_markdown` (the same notes and tables, figures left out, for terminals and pull
requests). Table cells are formatted once, when a table is built, so both renderings show
the same text.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Note:
    """A paragraph. ``kind``: ``info``, ``missing`` (a stage's results are absent) or ``warning``."""

    text: str
    kind: str = "info"


@dataclass
class Table:
    id: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    # Columns (by name) whose cells are numbers: right-aligned in both renderings.
    numeric: tuple[str, ...] = ()


@dataclass
class Figure:
    id: str
    caption: str
    svg: str


@dataclass
class Details:
    """A block shown folded in the page (``<details>``); Markdown shows its content."""

    summary: str
    blocks: list = field(default_factory=list)


@dataclass
class Row:
    """Blocks shown side by side in the page (wrapping when narrow); Markdown shows them in turn."""

    blocks: list = field(default_factory=list)


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)


def fmt_int(value: Any) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def fmt_float(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_pct(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * float(value):.{digits}f}%"


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 0 24px 48px; color: #1d232a; line-height: 1.45;
       font-size: 15px; background: #fff; }
header { border-bottom: 2px solid #d0d7de; padding: 18px 0 10px; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
.meta { color: #57606a; font-size: 13.5px; margin: 2px 0; }
nav { font-size: 14px; margin: 10px 0 0; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
.glance { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0 4px; }
.glance div { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; background: #f6f8fa; }
.glance b { display: block; font-size: 19px; }
.glance span { color: #57606a; font-size: 12.5px; }
p.note { margin: 8px 0; }
p.missing { background: #fff8c5; border-left: 4px solid #d4a72c; padding: 6px 10px; }
p.warning { background: #ffebe9; border-left: 4px solid #cf222e; padding: 6px 10px; }
figure { margin: 14px 0 18px; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #57606a; font-size: 13.5px; margin-top: 2px; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 13.5px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
.row { display: flex; flex-wrap: wrap; gap: 0 22px; align-items: flex-start; }
details { margin: 10px 0; }
summary { cursor: pointer; font-weight: 600; }
code { font-size: 13px; }
"""

_ID_ATTR = re.compile(r'\bid="([^"]+)"')


def scope_svg_ids(svg: str, prefix: str) -> str:
    """Prefix every id of an SVG (and the references to it), so many SVGs share one page safely."""
    ids = set(_ID_ATTR.findall(svg))
    if not ids:
        return svg

    def rename(match: re.Match) -> str:
        name = match.group(2)
        return f"{match.group(1)}{prefix}-{name}" if name in ids else match.group(0)

    svg = _ID_ATTR.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    return re.sub(r'(url\(#|href="#)([^)"]+)', rename, svg)


def _html_block(block: Any) -> str:
    if isinstance(block, Note):
        return f'<p class="note {block.kind}">{html.escape(block.text)}</p>'
    if isinstance(block, Figure):
        return (
            f'<figure class="plot" id="{block.id}">{scope_svg_ids(block.svg, block.id)}'
            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Table):
        num = set(block.numeric)
        cls = lambda c: ' class="num"' if c in num else ""  # noqa: E731
        head = "".join(f"<th{cls(c)}>{html.escape(c)}</th>" for c in block.columns)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td{cls(c)}>{html.escape(str(v))}</td>"
                for c, v in zip(block.columns, row, strict=True)
            )
            + "</tr>"
            for row in block.rows
        )
        return (
            f'<table id="{block.id}"><caption>{html.escape(block.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    if isinstance(block, Row):
        return '<div class="row">' + "".join(_html_block(b) for b in block.blocks) + "</div>"
    if isinstance(block, Details):
        inner = "".join(_html_block(b) for b in block.blocks)
        return f"<details><summary>{html.escape(block.summary)}</summary>{inner}</details>"
    raise TypeError(f"unknown report block {block!r}")


def render_html(
    title: str, meta: list[str], glance: list[tuple[str, str]], sections: list[Section]
) -> str:
    """The whole page. ``meta``: lines under the title; ``glance``: (value, label) tiles."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    tiles = "".join(
        f"<div><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>"
        for value, label in glance
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{html.escape(title)}</h1>",
        *[f'<p class="meta">{html.escape(line)}</p>' for line in meta],
        f'<div class="glance">{tiles}</div>' if tiles else "",
        f"<nav>{nav}</nav></header>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        parts += [_html_block(b) for b in s.blocks]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_block(block: Any) -> list[str]:
    if isinstance(block, Note):
        prefix = {"missing": "> **Not run:** ", "warning": "> **Warning:** "}.get(block.kind, "")
        return [prefix + block.text, ""]
    if isinstance(block, Figure):
        return []
    if isinstance(block, Table):
        num = set(block.numeric)
        lines = [f"**{block.caption}**", ""]
        lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
        lines.append("|" + "|".join("---:" if c in num else "---" for c in block.columns) + "|")
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
        return [*lines, ""]
    if isinstance(block, Row):
        return [line for b in block.blocks for line in _md_block(b)]
    if isinstance(block, Details):
        return (
            [f"<details><summary>{block.summary}</summary>", ""]
            + [line for b in block.blocks for line in _md_block(b)]
            + ["</details>", ""]
        )
    raise TypeError(f"unknown report block {block!r}")


def render_markdown(
    title: str, meta: list[str], glance: list[tuple[str, str]], sections: list[Section]
) -> str:
    lines = [f"# {title}", ""]
    lines += [f"{line}  " for line in meta]
    if glance:
        lines += ["", " · ".join(f"**{value}** {label}" for value, label in glance)]
    lines.append("")
    for s in sections:
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            lines += _md_block(b)
    return "\n".join(lines).rstrip() + "\n"
