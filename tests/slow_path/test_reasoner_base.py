"""Reasoner registry and config: lazy backends, plugins, clear errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sid_index.errors import ConfigError
from sid_index.sid_index import SIDIndex
from slow_path.reasoner import (
    BackendUnavailableError,
    Reasoner,
    ReasonerConfig,
    ReasonRequest,
    get_reasoner,
    reasoner_names,
    register_reasoner,
)
from slow_path.reasoner.base import build_prompt, check_requests
from slow_path.reasoner.rule_backend import RuleReasoner


def test_unknown_backend_names_the_choices(sp_index: SIDIndex) -> None:
    with pytest.raises(ConfigError, match=r"unknown reasoner backend 'nope'.*rule.*transformers"):
        get_reasoner("nope", ReasonerConfig(), index=sp_index)


def test_builtin_rule_backend_is_a_reasoner(sp_index: SIDIndex) -> None:
    r = get_reasoner("rule", ReasonerConfig(model_version="v9"), index=sp_index)
    assert isinstance(r, Reasoner) and isinstance(r, RuleReasoner)
    assert r.model_version == "v9" and r.level_sizes == sp_index.sids.level_sizes


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_without_vllm_is_a_named_error(sp_index: SIDIndex, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="needs vLLM"):
        get_reasoner("vllm", ReasonerConfig(release_dir=tmp_path), index=sp_index)


def test_registered_and_plugin_backends(
    sp_index: SIDIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_reasoner("rule-copy", RuleReasoner)
    assert "rule-copy" in reasoner_names()
    assert isinstance(get_reasoner("rule-copy", ReasonerConfig(), index=sp_index), RuleReasoner)
    (tmp_path / "my_plugin.py").write_text(
        "from slow_path.reasoner.rule_backend import RuleReasoner\n"
        "def make(config, index):\n    return RuleReasoner(config, index)\n"
        "not_callable = 3\n"
        "def wrong(config, index):\n    return object()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert isinstance(
            get_reasoner("my_plugin:make", ReasonerConfig(), index=sp_index), RuleReasoner
        )
        with pytest.raises(ConfigError, match="has no 'missing'"):
            get_reasoner("my_plugin:missing", ReasonerConfig(), index=sp_index)
        with pytest.raises(ConfigError, match="not callable"):
            get_reasoner("my_plugin:not_callable", ReasonerConfig(), index=sp_index)
        with pytest.raises(ConfigError, match="returned object"):
            get_reasoner("my_plugin:wrong", ReasonerConfig(), index=sp_index)
        with pytest.raises(ConfigError, match="cannot import"):
            get_reasoner("no_such_module_xyz:make", ReasonerConfig(), index=sp_index)
    finally:
        sys.modules.pop("my_plugin", None)
    with pytest.raises(ConfigError, match="contain no ':'"):
        register_reasoner("a:b", RuleReasoner)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_think_tokens": -1}, "max_think_tokens"),
        ({"num_answers": 101}, "num_answers"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": "int8"}, "dtype"),
        ({"model_version": ""}, "model_version"),
    ],
)
def test_config_validation_names_the_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ReasonerConfig(**kwargs)  # type: ignore[arg-type]


def test_model_dir_resolution(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--release"):
        ReasonerConfig().resolved_model_dir()
    assert ReasonerConfig(release_dir=tmp_path).resolved_model_dir() == tmp_path / "reasoner"
    assert ReasonerConfig(release_dir=tmp_path).resolved_persona_model() is None
    (tmp_path / "reasoner").mkdir()
    (tmp_path / "reasoner" / "personas.json").write_text("{}")
    assert ReasonerConfig(release_dir=tmp_path).resolved_persona_model() == (
        tmp_path / "reasoner" / "personas.json"
    )


def test_prompt_keeps_the_most_recent_items(sp_index: SIDIndex) -> None:
    rows = np.arange(30)
    prompt = build_prompt(sp_index, ReasonRequest("u", rows), ReasonerConfig(max_history_items=4))
    assert prompt.startswith("<user>history: ") and prompt.endswith("</user><think>")
    assert prompt.count(";") == 3  # 4 items
    assert sp_index.sids.sid_text(29) in prompt and sp_index.sids.sid_text(25) not in prompt
    answer_only = build_prompt(sp_index, ReasonRequest("u", rows), ReasonerConfig(thinking=False))
    assert answer_only.endswith("<think></think><answer>")


def test_check_requests_rejects_bad_rows() -> None:
    with pytest.raises(ConfigError, match="no history"):
        check_requests([ReasonRequest("u", np.zeros(0, dtype=np.int64))], 10)
    with pytest.raises(ConfigError, match="outside the catalogue"):
        check_requests([ReasonRequest("u", np.array([3, 10]))], 10)
