"""Markdown helpers shared by the benchmark scripts: tables, and replacing a script's section of README.md."""

from __future__ import annotations

import sys
from pathlib import Path


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def md_table(headers: list[str], cells: list[list[str]]) -> str:
    lines = [md_row(headers), "|" + "|".join(["---"] * len(headers)) + "|"]
    return "\n".join(lines + [md_row(c) for c in cells])


def replace_section(readme: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (appended when the markers are new)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if begin not in old:
        old += f"\n{begin}\n{end}\n"
    head, _, rest = old.partition(begin)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{tail}", encoding="utf-8")


def emit(text: str, readme: Path, name: str, write: bool) -> None:
    """Print a script's results; with ``write`` (its --write-readme flag) also replace its README section."""
    print(text)
    if write:
        replace_section(readme, name, text)
        print(f"\nwrote {readme}", file=sys.stderr)
