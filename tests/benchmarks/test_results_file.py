"""RESULTS.md sections: a benchmark replaces its own section and leaves the others alone."""

from __future__ import annotations

from pathlib import Path

from benchmarks.results_file import replace_section


def test_replace_and_append_sections(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    replace_section("## A", "## A\n\none\n", path)
    replace_section("## B", "## B\n\ntwo\n", path)
    replace_section("## A", "## A\n\nthree\n", path)
    text = path.read_text()
    assert text.startswith("# Benchmark results\n")
    assert "one" not in text and text.index("three") < text.index("two")
    assert text.count("## A") == 1 and text.count("## B") == 1
