"""Self-contained HTML pages (charts embedded as PNG data URIs): one file a person can open anywhere.
Charts use matplotlib's object API, not pyplot, so jobs sharing a process never share a figure."""

from __future__ import annotations

import base64
import html
import io

import pandas as pd
from matplotlib.figure import Figure

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.warning { background: #fff4e0; border-left: 4px solid #e08a00; padding: .4em .8em; margin: .3em 0; }
.ok { background: #e8f6e8; border-left: 4px solid #2a8a2a; padding: .4em .8em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #f0f0f0; } td:nth-child(2) { text-align: left; }
tr.LOW td { background: #fff4e0; } tr.MISSING td { background: #fde8e8; } tr.ACT td { background: #fde8e8; }
img { max-width: 100%; }
"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def png_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table_html(df: pd.DataFrame, row_class: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        css = f" class=\"{html.escape(str(r[row_class]))}\"" if row_class else ""
        cells = "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in r)
        rows.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def format_cell(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)


def warnings_html(warnings: list[str], all_clear: str) -> str:
    if not warnings:
        return f"<p class=\"ok\">{html.escape(all_clear)}</p>"
    return "".join(f"<p class=\"warning\">{html.escape(w)}</p>" for w in warnings)
