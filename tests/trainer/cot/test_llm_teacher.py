"""LLM teacher against a real HTTP server on 127.0.0.1 with canned replies: validation, retries
with backoff, feedback of invalid replies, fallback, timeouts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from sid_index.errors import ConfigError
from trainer.cot.base import TeacherError
from trainer.cot.llm_teacher import InvalidReply, LLMTeacher, LLMTeacherConfig
from trainer.cot.rule_teacher import RuleTeacher


class CannedServer:
    """Answers POST /v1/chat/completions with queued (status, body) replies, in order."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, str]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                server.requests.append(json.loads(self.rfile.read(length)))
                server.headers.append(dict(self.headers))
                status, body = server.replies.pop(0) if server.replies else (500, "empty queue")
                if self.path != "/v1/chat/completions":
                    status, body = 404, "wrong path"
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def chat(self, content: str, status: int = 200) -> None:
        body = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        self.replies.append((status, json.dumps(body)))


@pytest.fixture
def server() -> Iterator[CannedServer]:
    s = CannedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


def _teacher(
    rule_teacher: RuleTeacher, url: str, *, fallback: bool = False, **kw: Any
) -> LLMTeacher:
    cfg = LLMTeacherConfig(
        base_url=url, model="tiny", backoff_s=0.01, max_backoff_s=0.02, **{"timeout_s": 5.0, **kw}
    )
    return LLMTeacher(
        rule_teacher.catalog,
        rule_teacher.codes,
        rule_teacher.personas,
        cfg,
        labels=rule_teacher.labels,
        fallback=rule_teacher if fallback else None,
    )


def _valid(codes: np.ndarray, item: int, persona: int = 1, nxt: int = 2) -> str:
    a, b = (int(c) for c in codes[item, :2])
    other = (a + 1) % (int(codes[:, 0].max()) + 1)
    return json.dumps(
        {
            "persona_id": persona,
            "interests": [
                {"sid_prefix": f"<a_{other}>", "weight": 3, "label": "something else"},
                {"sid_prefix": [a, b], "weight": 1, "label": "what comes next"},
            ],
            "next_interest": nxt,
            "transition": "after this, that",
            "extra": "ignored",
        }
    )


def test_valid_reply_becomes_a_cot(server: CannedServer, rule_teacher: RuleTeacher) -> None:
    codes = rule_teacher.codes
    server.chat("<think>hmm</think>```json\n" + _valid(codes, 5) + "\n```")
    with _teacher(rule_teacher, server.url, api_key="sekret") as teacher:
        out = teacher.explain(3, np.array([1, 2, 3]), 5)
    assert out is not None and out.hindsight and out.source == "llm:tiny"
    cot = out.cot
    assert cot.persona_id == 1 and cot.persona_name == rule_teacher.personas.title(1)
    assert [i.sid_prefix for i in cot.interests][1] == tuple(int(c) for c in codes[5, :2])
    assert [i.weight for i in cot.interests] == [0.75, 0.25]
    assert cot.next_interest == 1 and cot.transition == "after this, that"
    req = server.requests[0]
    assert req["model"] == "tiny" and req["response_format"] == {"type": "json_object"}
    prompt = req["messages"][1]["content"]
    assert "chose next" in prompt and rule_teacher.catalog.titles[5].split()[0] in prompt
    assert server.headers[0]["Authorization"] == "Bearer sekret"
    assert teacher.stats.successes == 1 and teacher.stats.requests == 1


def test_retries_http_errors_then_succeeds(server: CannedServer, rule_teacher: RuleTeacher) -> None:
    server.replies.append((503, "busy"))
    server.replies.append((429, "slow down"))
    server.chat(_valid(rule_teacher.codes, 7))
    teacher = _teacher(rule_teacher, server.url)
    out = teacher.explain(0, np.array([4, 7]), None)
    assert out is not None and not out.hindsight and out.predicted_next == out.cot.next_interest
    assert teacher.stats.http_errors == 2 and teacher.stats.requests == 3
    assert "Authorization" not in server.headers[0]
    assert "chose next" not in server.requests[0]["messages"][1]["content"]


def test_invalid_replies_are_sent_back_and_retried(
    server: CannedServer, rule_teacher: RuleTeacher
) -> None:
    server.chat("I think the user likes pens.")
    server.chat(_valid(rule_teacher.codes, 5, persona=999))
    server.chat(_valid(rule_teacher.codes, 5))
    teacher = _teacher(rule_teacher, server.url, max_attempts=3)
    out = teacher.explain(0, np.array([1]), 5)
    assert out is not None and teacher.stats.invalid_replies == 2
    second, third = server.requests[1]["messages"], server.requests[2]["messages"]
    assert second[2] == {"role": "assistant", "content": "I think the user likes pens."}
    assert "no JSON object" in second[3]["content"]
    assert "persona_id 999" in third[3]["content"] and len(third) == 4


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"next_interest": 3}, "next_interest 3"),
        ({"interests": []}, "schema"),
        ({"interests": [{"sid_prefix": "<b_1>", "weight": 1, "label": "x"}]}, "level order"),
        ({"interests": [{"sid_prefix": [0, 0, 0], "weight": 1, "label": "x"}]}, "levels"),
        ({"interests": [{"sid_prefix": [10**6], "weight": 1, "label": "x"}]}, "outside"),
        ({"interests": [{"sid_prefix": [0], "weight": -1, "label": "x"}]}, "schema"),
        ({"transition": "  "}, "empty"),
    ],
)
def test_reply_validation(rule_teacher: RuleTeacher, patch: dict[str, Any], reason: str) -> None:
    reply = {**json.loads(_valid(rule_teacher.codes, 5)), "next_interest": 1, **patch}
    teacher = _teacher(rule_teacher, "http://127.0.0.1:9")
    with pytest.raises(InvalidReply, match=reason):
        teacher.parse_reply(json.dumps(reply))


def test_all_attempts_fail_then_fallback_or_error(
    server: CannedServer, rule_teacher: RuleTeacher
) -> None:
    for _ in range(2):
        server.chat("{not json")
    teacher = _teacher(rule_teacher, server.url, fallback=True, max_attempts=2)
    out = teacher.explain(0, np.array([1, 2]), 5)
    assert out is not None and out.source == "rule (fallback)"
    assert teacher.stats.fallbacks == 1 and teacher.stats.requests == 2
    server.replies.append((401, "no"))  # not retryable: one request only
    bare = _teacher(rule_teacher, server.url, max_attempts=3)
    with pytest.raises(TeacherError, match="HTTP 401"):
        bare.explain(0, np.array([1, 2]), 5)
    assert bare.stats.requests == 1 and bare.stats.failures == 1


def test_timeouts_and_refused_connections_are_bounded(
    rule_teacher: RuleTeacher, silent_server: tuple[str, int], closed_port: int
) -> None:
    host, port = silent_server
    slow = _teacher(rule_teacher, f"http://{host}:{port}", timeout_s=0.2, max_attempts=2)
    with pytest.raises(TeacherError, match="Timeout"):
        slow.explain(0, np.array([1]), None)
    assert slow.stats.http_errors == 2
    refused = _teacher(rule_teacher, f"http://127.0.0.1:{closed_port}", fallback=True)
    out = refused.explain(0, np.array([1]), None)
    assert out is not None and out.source.endswith("(fallback)")
    assert refused.stats.http_errors == 3


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        LLMTeacherConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ConfigError, match="max_attempts"):
        LLMTeacherConfig(base_url="http://x", model="m", max_attempts=0)
    with pytest.raises(ConfigError, match="backoff"):
        LLMTeacherConfig(base_url="http://x", model="m", backoff_s=5, max_backoff_s=1)
