"""The report emitter: blocks rendered both as Markdown and as self-contained HTML."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

from simclr_ad.fileio import atomic_write_text


class Document:
    """Blocks rendered both as Markdown and as self-contained HTML (figures as data URIs)."""

    def __init__(self, figures: dict[str, bytes]):
        self.blocks: list[tuple[str, Any]] = []
        self.figures = figures

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: Sequence[str]) -> None:
        self.blocks.append(("ul", list(lines)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", ([str(h) for h in header], [[str(c) for c in r] for r in rows])))

    def figure(self, name: str, caption: str) -> None:
        if name in self.figures:
            self.blocks.append(("img", (name, caption)))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "p":
                out.append(value)
            elif kind == "ul":
                out.append("\n".join(f"- {line}" for line in value))
            elif kind == "table":
                header, rows = value
                cell = lambda text: text.replace("|", "\\|")  # noqa: E731
                out.append("\n".join(["| " + " | ".join(map(cell, header)) + " |",
                                      "|" + "---|" * len(header),
                                      *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]))
            elif kind == "img":
                out.append(f"![{value[1]}]({value[0]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        esc = html.escape
        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
               "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
               "text-align:right}th{background:#eee}td:first-child{text-align:left}"
               "img{max-width:100%}code{background:#f4f4f4}</style></head><body>"]
        for kind, value in self.blocks:
            if kind == "h":
                out.append(f"<h{value[0]}>{esc(value[1])}</h{value[0]}>")
            elif kind == "p":
                out.append(f"<p>{esc(value)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in value) + "</ul>")
            elif kind == "table":
                header, rows = value
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")
            elif kind == "img":
                data = base64.b64encode(self.figures[value[0]]).decode("ascii")
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(value[1])}'>"
                           f"<figcaption>{esc(value[1])}</figcaption></figure>")
        return "\n".join(out) + "\n</body></html>\n"


def write_run_md(stages_tsv: Path, out: Path) -> None:
    """RUN.md from a stage log plus this machine.

    A log line is name, status, seconds, git SHA, CPU class and command (scripts/stages.sh); lines
    written before the CPU class was logged have no such field, and show "–" there.
    """
    import os
    import platform

    import torch

    from simclr_ad import runtime

    rows = []
    for line in stages_tsv.read_text().splitlines():
        fields = line.split("\t", 5)
        if len(fields) == 5:  # an older line: no CPU class
            fields.insert(4, "–")
        if len(fields) == 6:
            rows.append(fields)
    total = sum(int(r[2]) for r in rows if r[2].isdigit())
    lines = ["# How these results were made", "",
             f"Machine of this report: {platform.machine()}, {os.cpu_count()} CPU cores, CPU class "
             f"{runtime.host_class()} ({runtime.cpu_model() or 'model unknown'}), {platform.platform()}, "
             f"Python {platform.python_version()}, torch {torch.__version__}. "
             f"{'GPU: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'No GPU'}. "
             "Each stage's own CPU class is in its row.", "",
             f"Total wall time of the logged sittings: {total / 3600:.2f} h.", "",
             "| stage | status | wall time | git SHA | CPU class | exact command |", "|---|---|---|---|---|---|"]
    for name, status, seconds, sha, cpu, command in rows:
        took = f"{int(seconds) / 60:.1f} min" if seconds.isdigit() else seconds  # e.g. a stage still running
        lines.append(f"| {name} | {status} | {took} | {sha} | {cpu} | `{command}` |")
    atomic_write_text(out, "\n".join(lines) + "\n")
