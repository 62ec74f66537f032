"""`LLMTeacher`: the three-part chain of thought written by an LLM behind an OpenAI-compatible
endpoint (`POST {base_url}/v1/chat/completions`, e.g. a vLLM server).

The prompt lists the persona prototypes, the user's history (SIDs, titles, categories), the
interest regions the history holds (SID prefixes with labels) and, for a training example,
the true next item; the model answers with one JSON object::

    {"persona_id": 3,
     "interests": [{"sid_prefix": "<a_12><b_3>", "weight": 0.6, "label": "paper and notebooks"},
                   {"sid_prefix": "<a_40>", "weight": 0.4, "label": "desk lighting"}],
     "next_interest": 2,
     "transition": "after a desk lamp, bulbs and organizers usually follow"}

(`sid_prefix` may also be a list of codes; `next_interest` is 1-based.) The reply is validated
twice: its shape with pydantic, its content against the catalogue (a known persona, 1..5
interests, prefixes of 1..L-1 levels with in-range codes, a next index in range). HTTP errors
(timeouts, refused connections, 429, 5xx) and invalid replies are retried with exponential
backoff up to `max_attempts` (an invalid reply is sent back with the reason, so the model can
correct itself); other 4xx fail at once. When every attempt fails, the fallback teacher (if
any) answers and its output is marked "(fallback)"; without one, `TeacherError` is raised.
Counts of each outcome are kept in `LLMTeacher.stats`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sid_index.codes import format_sid
from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog
from slow_path.cot_format import MAX_INTERESTS, CoT, CoTInterest, short_title
from trainer.cot.base import CoTTeacher, TeacherCoT, TeacherError
from trainer.cot.personas import PersonaModel
from trainer.cot.prefix_stats import PrefixLabels

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_SID_TOKENS_RE = re.compile(r"<([a-z])_(\d{1,9})>")
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)

SYSTEM_PROMPT = (
    "You are a recommendation analyst. Given a user's history of items (each with a Semantic "
    "ID such as <a_12><b_3><c_9>, a title and a category), reason in three parts: (1) persona: "
    "the one persona prototype from the list that fits the user best; (2) interests: 1 to 5 "
    "interest hypotheses, best first, each a Semantic ID prefix (the first one or two tokens of "
    "item IDs), a weight and a short label; (3) transition: which of your interests the next "
    "item most likely comes from (1-based) and one sentence why. Reply with one JSON object "
    'only: {"persona_id": int, "interests": [{"sid_prefix": str, "weight": float, "label": str}'
    '], "next_interest": int, "transition": str}.'
)


@dataclass(frozen=True, slots=True)
class LLMTeacherConfig:
    """Where the endpoint is and how patiently to ask it."""

    base_url: str
    """Server root, e.g. "http://127.0.0.1:8000" (the path /v1/chat/completions is added)."""
    model: str
    """Model name sent in the request."""
    api_key: str | None = None
    """Bearer token, if the server wants one (never logged)."""
    timeout_s: float = 60.0
    """Timeout of one HTTP request (connect + read)."""
    max_attempts: int = 3
    """Requests per example, the first included (HTTP errors and invalid replies count)."""
    backoff_s: float = 1.0
    """Delay before the first retry; doubles after every failed attempt."""
    max_backoff_s: float = 30.0
    """Upper bound of one delay."""
    temperature: float = 0.2
    """Sampling temperature."""
    max_tokens: int = 512
    """Completion token limit."""
    json_mode: bool = True
    """Ask for `response_format: json_object` (turn off for servers that reject it)."""
    max_history: int = 20
    """Most recent history items shown to the model."""
    name: str = "llm"
    """Teacher name recorded on outputs (the model name is appended)."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{self.base_url=} must be an http(s) URL")
        if not self.model:
            raise ConfigError("LLM teacher needs a model name")
        if not self.timeout_s > 0 or self.max_attempts < 1:
            raise ConfigError(f"{self.timeout_s=} must be > 0 and {self.max_attempts=} >= 1")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ConfigError(f"need 0 <= {self.backoff_s=} <= {self.max_backoff_s=}")
        if self.max_tokens < 1 or self.max_history < 1:
            raise ConfigError(f"{self.max_tokens=} and {self.max_history=} must be >= 1")


class _InterestReply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sid_prefix: str | list[int]
    weight: float = Field(ge=0.0, le=1e6)
    label: str = Field(max_length=200)


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    persona_id: int
    interests: list[_InterestReply] = Field(min_length=1, max_length=MAX_INTERESTS)
    next_interest: int
    transition: str = Field(max_length=600)


@dataclass
class LLMTeacherStats:
    """What happened so far (for logs and the corpus report)."""

    requests: int = 0
    http_errors: int = 0
    invalid_replies: int = 0
    successes: int = 0
    fallbacks: int = 0
    failures: int = 0
    last_problem: str = ""
    problems: list[str] = field(default_factory=list)
    """The most recent problems (at most 20)."""

    def note(self, problem: str) -> None:
        self.last_problem = problem
        self.problems = [*self.problems[-19:], problem]


class InvalidReply(TeacherError):
    """A reply arrived but is unusable; the message is the reason (also shown to the model)."""


class LLMTeacher:
    """CoT from an OpenAI-compatible chat endpoint (see the module docstring)."""

    def __init__(
        self,
        catalog: Catalog,
        codes: np.ndarray,
        personas: PersonaModel,
        config: LLMTeacherConfig,
        *,
        labels: PrefixLabels | None = None,
        fallback: CoTTeacher | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.catalog = catalog
        self.codes = np.asarray(codes, dtype=np.int64)
        self.level_sizes = tuple(int(m) + 1 for m in self.codes.max(axis=0))
        self.personas = personas
        self.config = config
        self.labels = labels if labels is not None else PrefixLabels.build(catalog, self.codes)
        self.fallback = fallback
        self.name = f"{config.name}:{config.model}"
        self.stats = LLMTeacherStats()
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(
            base_url=config.base_url.rstrip("/"),
            timeout=config.timeout_s,
            headers=headers,
            transport=transport,
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> LLMTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- prompt ---------------------------------------------------------------------------------

    def _item_line(self, item: int) -> str:
        cat = self.catalog.categories[item]
        where = f" [{' > '.join(cat[-2:])}]" if cat else ""
        return f"{format_sid(self.codes[item])} {short_title(self.catalog.titles[item])}{where}"

    def messages(self, history: np.ndarray, target: int | None) -> list[dict[str, str]]:
        """The chat messages of one example."""
        hist = history[-self.config.max_history :]
        personas = "\n".join(
            f"{p}: {self.personas.title(p)}" for p in range(self.personas.num_personas)
        )
        items = "\n".join(f"{i + 1}. {self._item_line(int(it))}" for i, it in enumerate(hist))
        regions = []
        sids = self.codes[hist].tolist()
        depths = range(1, min(2, len(self.level_sizes) - 1) + 1)  # prefixes, never a full SID
        for prefix in dict.fromkeys(tuple(sid[:n]) for sid in sids for n in depths):
            regions.append(f"{format_sid(prefix)} {self.labels.label(prefix)}")
        parts = [
            f"Persona prototypes (id: description):\n{personas}",
            f"History, oldest first:\n{items}",
            "Interest regions in the history (prefix label):\n" + "\n".join(regions),
        ]
        if target is not None:
            parts.append(
                f"The item the user chose next is {self._item_line(int(target))}. Choose "
                "interests so that one of them covers it, and explain the transition to it."
            )
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    # -- reply ----------------------------------------------------------------------------------

    def _prefix(self, raw: str | list[int]) -> tuple[int, ...]:
        if isinstance(raw, str):
            found = _SID_TOKENS_RE.findall(raw)
            if not found or any(ord(letter) - 97 != i for i, (letter, _) in enumerate(found)):
                raise InvalidReply(f"sid_prefix {raw!r:.60} is not SID tokens in level order")
            codes = tuple(int(c) for _, c in found)
        else:
            codes = tuple(int(c) for c in raw)
        if not 1 <= len(codes) < len(self.level_sizes):
            raise InvalidReply(
                f"sid_prefix {raw!r:.60} must have 1..{len(self.level_sizes) - 1} levels"
            )
        if any(not 0 <= c < s for c, s in zip(codes, self.level_sizes, strict=False)):
            raise InvalidReply(f"sid_prefix {raw!r:.60} has a code outside the catalogue")
        return codes

    def parse_reply(self, content: str) -> CoT:
        """The CoT of a reply's text (raises `InvalidReply` with the reason)."""
        text = _THINK_RE.sub("", content).strip()
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            raise InvalidReply("no JSON object in the reply")
        try:
            reply = _Reply.model_validate(json.loads(text[start : end + 1]))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise InvalidReply(f"reply does not match the schema: {str(exc)[:300]}") from None
        if not 0 <= reply.persona_id < self.personas.num_personas:
            raise InvalidReply(f"persona_id {reply.persona_id} is not in the list")
        if not 1 <= reply.next_interest <= len(reply.interests):
            raise InvalidReply(
                f"next_interest {reply.next_interest} is not in 1..{len(reply.interests)}"
            )
        prefixes = [self._prefix(i.sid_prefix) for i in reply.interests]
        if len(set(prefixes)) != len(prefixes):
            raise InvalidReply("interests repeat a sid_prefix")
        total = sum(i.weight for i in reply.interests)
        if not math.isfinite(total):
            raise InvalidReply("interest weights are not finite")
        n = len(reply.interests)
        interests = tuple(
            CoTInterest(p, i.weight / total if total > 0 else 1.0 / n, i.label)
            for p, i in zip(prefixes, reply.interests, strict=True)
        )
        pid = reply.persona_id
        cot = CoT(
            pid, self.personas.title(pid), interests, reply.next_interest - 1, reply.transition
        )
        if not cot.transition or any(not i.label for i in cot.interests):
            raise InvalidReply("empty label or transition")
        return cot

    # -- the loop -------------------------------------------------------------------------------

    def _post(self, messages: list[dict[str, str]]) -> str:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        self.stats.requests += 1
        response = self._client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InvalidReply("response is not a chat completion") from None
        if not isinstance(content, str):
            raise InvalidReply("chat completion without text content")
        return content

    def explain(self, user: int, history: np.ndarray, target: int | None) -> TeacherCoT | None:
        """Ask the endpoint; retry, then fall back (see the module docstring)."""
        history = np.asarray(history, dtype=np.int64)
        if len(history) == 0:
            return None
        if (history < 0).any() or (history >= len(self.catalog)).any():
            raise DataError(f"user {user}: history has items outside the catalogue")
        messages = self.messages(history, target)
        delay = self.config.backoff_s
        for attempt in range(1, self.config.max_attempts + 1):
            retry = True
            content: str | None = None
            try:
                content = self._post(messages)
                cot = self.parse_reply(content)
                self.stats.successes += 1
                predicted = None if target is not None else cot.next_interest
                return TeacherCoT(cot, target is not None, predicted, self.name)
            except InvalidReply as exc:
                self.stats.invalid_replies += 1
                self.stats.note(f"attempt {attempt}: invalid reply: {exc}")
                if content is not None:  # show the model its reply and what is wrong with it
                    messages = [
                        *messages[:2],
                        {"role": "assistant", "content": content[:2000]},
                        {"role": "user", "content": f"Invalid: {exc}. Reply with the JSON only."},
                    ]
            except httpx.HTTPStatusError as exc:
                self.stats.http_errors += 1
                status = exc.response.status_code
                self.stats.note(f"attempt {attempt}: HTTP {status}")
                retry = status in _RETRY_STATUS
            except httpx.HTTPError as exc:  # timeouts, refused connections, broken streams
                self.stats.http_errors += 1
                self.stats.note(f"attempt {attempt}: {type(exc).__name__}")
            if not retry or attempt == self.config.max_attempts:
                break
            self._sleep(min(delay, self.config.max_backoff_s))
            delay *= 2
        return self._give_up(user, history, target)

    def _give_up(self, user: int, history: np.ndarray, target: int | None) -> TeacherCoT | None:
        if self.fallback is None:
            self.stats.failures += 1
            raise TeacherError(f"LLM teacher {self.name}: {self.stats.last_problem}")
        self.stats.fallbacks += 1
        out = self.fallback.explain(user, history, target)
        return None if out is None else replace(out, source=f"{out.source} (fallback)")
