"""The Grafana dashboard speaks the metrics contract in docs/metrics.md, and nothing else.

Parses the contract's metric tables (name, type, labels) and every PromQL query in the
dashboard, then checks names, histogram suffixes, label names and coverage both ways.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "docs" / "grafana" / "reasonrec-dashboard.json"

# Labels Prometheus attaches to every scraped series (target labels), and histogram buckets.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "service"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_METRIC = re.compile(r"\breasonrec_[a-z_]+")
_SELECTOR = re.compile(r"\b(reasonrec_[a-z_]+)\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|ignoring|on)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"[^\"]*\"\s*")


def parse_contract(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """`| metric | type | labels | ... |` table rows -> {name: (type, labels)}."""
    metrics: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"`reasonrec_[a-z_]+`", cells[0]):
            continue
        name = cells[0].strip("`")
        labels = frozenset(re.findall(r"`([a-z_]+)`", cells[2]))
        assert name not in metrics, f"{name} is listed twice in {CONTRACT.name}"
        metrics[name] = (cells[1], labels)
    return metrics


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def base_metric(series: str, contract: dict[str, tuple[str, frozenset[str]]]) -> str:
    """The contract name behind a series name (histograms expose _bucket/_sum/_count)."""
    if series in contract:
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and contract.get(base, ("",))[0] == "histogram":
            return base
    raise AssertionError(f"{series} is not in the metrics contract ({CONTRACT.name})")


def query_problems(expr: str, contract: dict[str, tuple[str, frozenset[str]]]) -> list[str]:
    """Names and labels in one PromQL expression that the contract does not define."""
    problems: list[str] = []
    try:
        metrics = {base_metric(s, contract) for s in _METRIC.findall(expr)}
    except AssertionError as exc:
        return [str(exc)]
    if not metrics:
        problems.append(f"no reasonrec metric in {expr!r}")
    for series in _METRIC.findall(expr):
        base = base_metric(series, contract)
        if contract[base][0] == "histogram" and series == base:
            problems.append(f"{base} is a histogram: query _bucket, _sum or _count")
    for series, matchers in _SELECTOR.findall(expr):
        base = base_metric(series, contract)
        allowed = (
            contract[base][1] | TARGET_LABELS | ({"le"} if series.endswith("_bucket") else set())
        )
        for part in filter(str.strip, matchers.split(",")):
            m = _MATCHER.fullmatch(part)
            if m is None:
                problems.append(f"unparsable matcher {part!r} in {expr!r}")
            elif m.group(1) not in allowed:
                problems.append(f"{base} has no label {m.group(1)!r}")
    histogram_le = any(s.endswith("_bucket") for s in _METRIC.findall(expr))
    for group in _GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label == "le" and histogram_le:
                continue
            if not any(label in contract[m][1] | TARGET_LABELS for m in metrics):
                problems.append(f"grouping label {label!r} is on none of {sorted(metrics)}")
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        problems.append(f"unbalanced brackets in {expr!r}")
    return problems


@pytest.fixture(scope="module")
def contract() -> dict[str, tuple[str, frozenset[str]]]:
    return parse_contract(CONTRACT.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_contract_lists_the_agreed_metrics(
    contract: dict[str, tuple[str, frozenset[str]]],
) -> None:
    assert contract == {
        "reasonrec_request_latency_seconds": (
            "histogram",
            frozenset({"endpoint", "variant", "protocol"}),
        ),
        "reasonrec_requests_total": (
            "counter",
            frozenset({"endpoint", "variant", "protocol", "code"}),
        ),
        "reasonrec_trace_lookups_total": ("counter", frozenset({"result"})),
        "reasonrec_beam_search_seconds": ("histogram", frozenset({"variant"})),
        "reasonrec_batch_size": ("histogram", frozenset()),
        "reasonrec_errors_total": ("counter", frozenset({"code"})),
        "reasonrec_release_info": ("gauge", frozenset({"variant", "release_version"})),
        "reasonrec_refresh_enqueues_total": ("counter", frozenset({"result"})),
        "reasonrec_traces_written_total": ("counter", frozenset()),
        "reasonrec_trace_parse_failures_total": ("counter", frozenset()),
        "reasonrec_reasoner_tokens_total": ("counter", frozenset()),
        "reasonrec_reasoner_batch_seconds": ("histogram", frozenset()),
        "reasonrec_queue_depth": ("gauge", frozenset({"queue"})),
        "reasonrec_trace_age_seconds": ("histogram", frozenset()),
        "reasonrec_dead_letters_total": ("counter", frozenset()),
    }
    for name, (kind, _labels) in contract.items():
        assert (kind == "counter") == name.endswith("_total"), name


def test_every_query_uses_only_contract_names_and_labels(
    contract: dict[str, tuple[str, frozenset[str]]], dashboard: dict[str, Any]
) -> None:
    queries = panel_queries(dashboard)
    assert queries
    problems = [f"{title}: {p}" for title, expr in queries for p in query_problems(expr, contract)]
    assert problems == []


def test_checker_rejects_unknown_names_and_labels(
    contract: dict[str, tuple[str, frozenset[str]]],
) -> None:
    # Negative controls: the checker above must be able to fail.
    assert query_problems("rate(reasonrec_request_total[5m])", contract)
    assert query_problems('rate(reasonrec_errors_total{user="1"}[5m])', contract)
    assert query_problems("sum by (variant) (rate(reasonrec_errors_total[5m]))", contract)
    assert query_problems("rate(reasonrec_batch_size[5m])", contract)
    ok = 'sum by (le, variant) (rate(reasonrec_beam_search_seconds_bucket{variant=~"a"}[5m]))'
    assert query_problems(ok, contract) == []


def test_every_contract_metric_has_a_panel(
    contract: dict[str, tuple[str, frozenset[str]]], dashboard: dict[str, Any]
) -> None:
    used = {
        base_metric(s, contract)
        for _title, expr in panel_queries(dashboard)
        for s in _METRIC.findall(expr)
    }
    assert set(contract) - used == set()


def test_latency_quantiles_by_variant(dashboard: dict[str, Any]) -> None:
    exprs = [e for _t, e in panel_queries(dashboard) if "request_latency_seconds_bucket" in e]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in e and "by (le, variant)" in e for e in exprs
        ), quantile


def test_template_variables_use_contract_labels(
    contract: dict[str, tuple[str, frozenset[str]]], dashboard: dict[str, Any]
) -> None:
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((reasonrec_[a-z_]+), ([a-z_]+)\)", var["definition"])
        assert m, var["definition"]
        assert m.group(2) in contract[m.group(1)][1] | TARGET_LABELS, var["definition"]


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
