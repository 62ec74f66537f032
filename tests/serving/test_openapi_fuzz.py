"""Schemathesis against the live server's OpenAPI document: generated valid and invalid
requests for every operation find no 5xx (bounded examples, loopback, well under a minute)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def test_openapi_documents_every_route(shared_server: Any, tools: Any) -> None:
    status, spec = tools.http(shared_server.http_port, "GET", "/openapi.json")
    assert status == 200
    assert set(spec["paths"]) == {
        "/v1/recommend", "/v1/events", "/v1/users/{user_id}/trace", "/healthz", "/readyz",
        "/metrics",
    }  # fmt: skip
    recommend = spec["paths"]["/v1/recommend"]["post"]
    assert {"200", "401", "422", "503"} <= set(recommend["responses"])
    body = spec["components"]["schemas"]["RecommendBody"]
    assert body["properties"]["k"]["maximum"] == 1000 and body["additionalProperties"] is False
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(shared_server: Any, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (the dev extra)")
    report = tmp_path / "events.ndjson"
    url = f"http://127.0.0.1:{shared_server.http_port}/openapi.json"
    result = subprocess.run(
        [
            exe, "run", url, "--checks", "not_a_server_error", "--max-examples", "50",
            "--seed", "7", "--workers", "1", "--phases", "examples,coverage,fuzzing",
            "--generation-database", "none", "--request-timeout", "20",
            "--exclude-path", "/metrics", "--no-color",
            "--report", "ndjson", "--report-ndjson-path", str(report),
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # It really exercised the API: every operation got many requests, with 2xx and 4xx.
    statuses: dict[str, set[int]] = {}
    for line in report.read_text().splitlines():
        for status, path in _responses(json.loads(line)):
            statuses.setdefault(path, set()).add(status)
    for path in ("/v1/recommend", "/v1/events", "/v1/users/{user_id}/trace"):
        assert any(400 <= s < 500 for s in statuses.get(path, ())), (path, statuses)
    assert not any(s >= 500 for codes in statuses.values() for s in codes), statuses


def _responses(event: Any) -> list[tuple[int, str]]:
    """(status, operation path) of every response recorded in one ndjson event."""
    out: list[tuple[int, str]] = []

    def walk(node: Any, path: str | None) -> None:
        if isinstance(node, dict):
            label = node.get("label") or node.get("path")
            if isinstance(label, str) and "/v1/" in label:
                path = label.split(" ", 1)[-1]
            status = node.get("status_code")
            if isinstance(status, int) and path is not None:
                out.append((status, path))
            for value in node.values():
                walk(value, path)
        elif isinstance(node, list):
            for value in node:
                walk(value, path)

    walk(event, None)
    return out
