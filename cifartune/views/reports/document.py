"""The report document: sections of paragraphs, tables and figures, written as one self-contained
HTML file (figures embedded) and a Markdown summary.

Everything that comes from a spec or from results is text and is escaped when written. Markup is
only what this package builds itself, marked by wrapping it in :class:`Html`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .plotting import Plot, data_axes

CODE_SPAN = re.compile(r"`([^`]+)`")


class Html(str):
    """Markup built by the report code (its inserted values already escaped): written as is."""

    __slots__ = ()


def esc(value: object) -> str:
    """Text for HTML: escaped, unless it is :class:`Html`."""
    if isinstance(value, Html):
        return str(value)
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return html.escape(str(value))


def prose(value: object) -> str:
    """Text for HTML as :func:`esc` makes it, with its Markdown code spans (a command or a
    trial id between backticks, written so for the Markdown summary) as ``<code>``."""
    text = esc(value)
    return text if isinstance(value, Html) else CODE_SPAN.sub(r"<code>\1</code>", text)


def tag(name: str, text: object, css: str = "") -> Html:
    attribute = f" class='{css}'" if css else ""
    return Html(f"<{name}{attribute}>{esc(text)}</{name}>")


def plain(value: object) -> str:
    """The reader's text of a cell or paragraph (markup dropped), for Markdown."""
    if isinstance(value, Html):
        return html.unescape(re.sub(r"<[^>]+>", "", value.replace("<br>", "; ")))
    return "–" if value is None or (isinstance(value, float) and value != value) else str(value)


def md_escape(text: str) -> str:
    """Markdown renderers pass HTML through: escape it, and the table cell separator."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


@dataclass
class Table:
    caption: str
    frame: pd.DataFrame
    note: str = ""
    sortable: bool = False


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # text, or Html
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file stem, caption)

    @property
    def empty(self) -> bool:
        return not (self.paragraphs or self.tables or self.figures)


@dataclass
class Report:
    title: str
    out: Path
    sections: list[Section] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    # Per figure: what its caption says each panel shows, and how many panels it drew (the
    # two agree, or a caption promises what the figure lacks; the tests check every figure).
    panels: dict[str, list[str]] = field(default_factory=dict)
    drawn_axes: dict[str, int] = field(default_factory=dict)

    def add_figure(self, section: Section, stem: str, plot: Plot | None) -> None:
        """Save the plot's figure as PNG and SVG and show it with its caption in `section`; a
        study with nothing to draw for this view (None) gets no figure and no placeholder."""
        import matplotlib.pyplot as plt

        if plot is None:
            return
        figure, caption = plot.figure, plot.caption
        self.panels[stem] = list(plot.panels)
        self.drawn_axes[stem] = len(data_axes(figure))
        target = self.out / "figures"
        target.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        self.images[stem] = buffer.getvalue()
        (target / f"{stem}.png").write_bytes(self.images[stem])
        figure.savefig(target / f"{stem}.svg", bbox_inches="tight")
        plt.close(figure)
        section.figures.append((stem, caption))


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;max-width:1180px;
margin:24px auto;padding:0 20px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;margin-bottom:4px} h2{margin-top:2em;border-bottom:2px solid #e5e5ea;
padding-bottom:4px} h3{font-size:1.05em;margin:1.2em 0 .4em}
.table-wrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0 .4em}
th,td{border:1px solid #d1d1d6;padding:4px 8px;text-align:left;vertical-align:top;
overflow-wrap:break-word}
th{background:#f2f2f7} tr:nth-child(even) td{background:#fafafa}
table.sortable th{cursor:pointer} table.sortable th:after{content:" \\2195";color:#8e8e93}
figure{margin:1em 0 2em} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption,.note{font-size:.9em;color:#3a3a3c;margin-top:4px} nav a{margin-right:12px}
.meta{color:#6e6e73;font-size:.9em} code{background:#f2f2f7;padding:0 3px;border-radius:3px}
.ok{color:#1a7f37;font-weight:600} .no{color:#b42318;font-weight:600}
.unsure{color:#9a6700;font-weight:600}
"""
# Click a header of a sortable table to sort by it (numbers by their leading value); without
# JavaScript the table reads the same, in the report's order.
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var dir=th.dataset.dir==='asc'?-1:1; th.dataset.dir=dir>0?'asc':'desc';
  var key=function(r){var s=r.cells[i].textContent.trim(),n=parseFloat(s);return isNaN(n)?s:n;};
  var rows=Array.prototype.slice.call(t.tBodies[0].rows);
  rows.sort(function(a,b){var x=key(a),y=key(b);
   if(typeof x!==typeof y){return (typeof x==='number'?-1:1)*dir;}
   return (x>y?1:x<y?-1:0)*dir;});
  rows.forEach(function(r){t.tBodies[0].appendChild(r);});});});});
"""


def anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower())


def table_html(table: Table) -> str:
    css = " class='sortable'" if table.sortable else ""
    head = "".join(f"<th>{esc(c)}</th>" for c in table.frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{prose(v)}</td>" for v in row) + "</tr>"
        for row in table.frame.itertuples(index=False)
    )
    # Sorting is the HTML page's: the Markdown summary does not say it.
    notes = [table.note] if table.note else []
    if table.sortable:
        notes.append("Click a column header to sort (the table reads the same without scripts).")
    note = "".join(f"<p class='note'>{prose(n)}</p>" for n in notes)
    return (
        f"<h3>{prose(table.caption)}</h3><div class='table-wrap'><table{css}><thead><tr>{head}"
        f"</tr></thead><tbody>{body}</tbody></table></div>{note}"
    )


def render_html(report: Report) -> str:
    sections = [s for s in report.sections if not s.empty]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
        f"<p class='meta'>generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by "
        "cifartune report, from the studies' Parquet files</p><nav>",
    ]
    parts += [f"<a href='#{anchor(s.title)}'>{esc(s.title)}</a>" for s in sections]
    parts.append("</nav>")
    for section in sections:
        parts.append(f"<h2 id='{anchor(section.title)}'>{esc(section.title)}</h2>")
        parts += [f"<p>{prose(p)}</p>" for p in section.paragraphs]
        parts += [table_html(t) for t in section.tables]
        for stem, caption in section.figures:
            data = base64.b64encode(report.images[stem]).decode()
            parts.append(
                f"<figure id='fig-{esc(stem)}'><img alt='{esc(caption.replace('`', ''))}' "
                f"src='data:image/png;base64,{data}'><figcaption>{prose(caption)}"
                "</figcaption></figure>"
            )
    parts.append(f"<script>{SORT_JS}</script></body></html>")
    return "\n".join(parts)


def table_markdown(table: Table) -> list[str]:
    """The table as GitHub Markdown (pandas' to_markdown, through tabulate): cells as text,
    escaped, never re-parsed as numbers."""
    frame = table.frame.map(lambda value: md_escape(plain(value)))
    frame.columns = [md_escape(plain(c)) for c in table.frame.columns]
    text = frame.to_markdown(index=False, tablefmt="github", disable_numparse=True)
    note = [md_escape(table.note), ""] if table.note else []
    return [f"**{md_escape(table.caption)}**", "", *text.splitlines(), "", *note]


def render_markdown(report: Report) -> str:
    lines = [f"# {md_escape(report.title)}", ""]
    for section in report.sections:
        if section.empty:
            continue
        lines += [f"## {md_escape(section.title)}", ""]
        for paragraph in section.paragraphs:
            lines += [md_escape(plain(paragraph)), ""]
        for table in section.tables:
            lines += table_markdown(table)
        lines += [
            f"![{md_escape(caption)}](figures/{stem}.png)" for stem, caption in section.figures
        ]
        lines.append("")
    return "\n".join(lines)
