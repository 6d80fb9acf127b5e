"""The results file: each benchmark's `--write` appends one row to its section's table in docs/benchmarks.md (the
section, with its text and table head, is created on first use), so the file keeps every run as a history."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def append_row(section: str, header: str, cells: list[str], doc: Path = DOC) -> None:
    """Append `| cells |` to the table under `section` (a `## ...` heading); `header` is the whole section (heading,
    text, table head) written at the end of `doc` when the section is missing. The table ends at the first line after
    its `|---` row that is not a table row."""
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + "\n\n" + header
    head, _, tail = text.partition(section)
    lines = tail.split("\n")
    end = next(i for i, line in enumerate(lines) if line.startswith("|---")) + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines.insert(end, "| " + " | ".join(cells) + " |")
    doc.write_text(head + section + "\n".join(lines), encoding="utf-8")
    print(f"appended to {doc}")
