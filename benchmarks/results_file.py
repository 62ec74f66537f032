"""benchmarks/RESULTS.md: each benchmark owns one `## ` section and replaces only that one."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section that starts with `heading` (a `## ` line) by `text`, or append it;
    every other section is left as it is."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    start = old.find(heading + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(heading))
        tail = old[nxt + 1 :] if nxt >= 0 else ""
        new = old[:start] + text + ("\n" + tail if tail else "")
    path.write_text(new, encoding="utf-8")
