"""HTML tables for the book: the notebooks print them as HTML outputs, which Jupyter Book renders as they are."""

from __future__ import annotations

import html

__all__ = ["html_table"]


def html_table(header, rows, note: str = "") -> str:
    """A plain HTML table (the book renders notebook HTML outputs as they are; no pandas needed).

    ``header``: the column titles; ``rows``: one sequence of cell values per row (each shown as
    ``str(value)``, HTML-escaped); ``note``: an optional small-print line under the table.
    """
    esc = lambda v: html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    foot = f"<p><small>{esc(note)}</small></p>" if note else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{foot}"
