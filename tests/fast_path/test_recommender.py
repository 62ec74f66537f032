"""`Recommender` over a tiny real release with real Redis stores: traces (hit, stale, lagged,
corrupt, unreachable), history from the store, filters, blending, batching invariance."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast_path.beam_search import BeamSearchConfig, constrained_beam_search
from fast_path.errors import EmptyHistoryError, RequestError, UnknownItemError
from fast_path.item_head import item_head_logits, rerank
from fast_path.model_step import HFModelStep
from fast_path.prompt import TraceTokens, encode, left_pad
from fast_path.recommender import Recommendation, Recommender, RecommendRequest
from sid_index.codes import format_sid
from sid_index.errors import ReleaseError
from sid_index.trie import Exclusion
from slow_path.history_store import RedisHistoryStore
from slow_path.redis_conn import redis_client
from slow_path.settings import RedisSettings
from slow_path.trace import Candidate, Interest, Persona, Trace, Transition, history_fingerprint
from slow_path.trace_store import RedisTraceStore, trace_key

WINDOW = 12  # TRAINED_WINDOW of the test release (conftest)


def _trace(
    user: str,
    history: Sequence[str],
    interests: Sequence[tuple[tuple[int, ...], float, str]] = (((0,), 1.0, "zero"),),
    candidates: Sequence[tuple[str, float]] = (),
    created_at: float | None = None,
) -> Trace:
    return Trace(
        user_id=user,
        persona=Persona(id=2, name="weekend cook"),
        interests=[Interest(p, w, label) for p, w, label in interests],
        transition=Transition(text="from pans to spices", next_interest=0),
        candidates=[Candidate(i, s) for i, s in candidates],
        text="<think>...</think>",
        model_version="reasoner-test",
        history_fingerprint=history_fingerprint(list(history)),
        created_at=time.time() if created_at is None else created_at,
    )


def _reference(
    release: Any,
    history: Sequence[str],
    *,
    beams: int,
    k: int,
    trace: TraceTokens | None = None,
    trace_at: int | None = None,
    excluded: Sequence[str] = (),
) -> list[str]:
    """Item ids decoded straight from the beam search on a prompt built here."""
    catalog, sids = release.index.catalog, release.index.sids
    window = [catalog.index_of(i) for i in history][-WINDOW:]
    prompt = encode(release.fast_model.vocab, sids.codes[window], trace, trace_at, items=window)
    ids, mask = left_pad([prompt])
    trie = release.index.trie
    exclusion = Exclusion.build(trie, [[catalog.index_of(i) for i in excluded]])
    result = constrained_beam_search(
        HFModelStep(release.fast_model.model),
        ids,
        mask,
        trie,
        release.fast_model.vocab.sid_offsets,
        BeamSearchConfig(num_beams=beams, num_return=beams),
        exclusion,
        normalize_over=release.fast_model.vocab.item_offset,
    )
    return [catalog.item_ids[i] for i in result.items[0].tolist() if i >= 0][:k]


def _ids(rec: Recommendation) -> list[str]:
    return [it.item_id for it in rec.items]


# ---- loading and basics ------------------------------------------------------------------------


def test_from_release_loads_and_answers(tiny_release: Any) -> None:
    from fast_path.settings import RecommenderSettings

    rec = Recommender.from_release(
        tiny_release.path,
        trace_store=None,
        history_store=None,
        settings=RecommenderSettings.load(num_threads=1),
    )
    assert rec.ready() and rec.release_version == "test-release-1"
    assert rec.history_window == WINDOW  # the manifest's training window beats history_max
    catalog = tiny_release.index.catalog
    assert rec.known_item(catalog.item_ids[0]) and not rec.known_item("no-such-item")
    history = tiny_release.history(0)
    out = rec.recommend(RecommendRequest("u0", history=history, k=5, num_beams=8))
    assert len(out.items) == 5 and out.trace_status == "disabled" and not out.trace_used
    assert out.release_version == "test-release-1" and out.history_source == "request"
    assert set(out.timings) == {"history", "trace", "decode", "total"}
    scores = [it.score for it in out.items]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
    for it in out.items:
        i = catalog.index_of(it.item_id)
        assert it.title == catalog.titles[i]
        assert it.sid == format_sid(tiny_release.index.sids.codes[i])
        assert it.source == "fast" and it.interest is None
        assert it.item_id not in history  # exclude_seen by default
    assert _ids(out) == _reference(tiny_release, history, beams=8, k=5, excluded=history)


def test_a_fast_model_with_item_tokens_reads_each_history_item(
    tmp_path: Any, tiny_release: Any
) -> None:
    from types import SimpleNamespace

    from fast_path.fast_model import FastModel, FastModelConfig, build_model
    from fast_path.settings import RecommenderSettings
    from fast_path.vocab import FastVocab
    from sid_index.release import ReleaseWriter

    index = tiny_release.index
    assert index.sids.codes.shape[1] == 3
    vocab = FastVocab(index.sids.level_sizes, num_personas=4, item_buckets=len(index.sids.codes))
    arch = FastModelConfig(
        hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
        max_positions=64, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(1)
    model = build_model(vocab, arch)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    with ReleaseWriter(tmp_path / "r") as w:
        index.save(w.part_dir("sid_index"))
        FastModel(model.eval(), vocab, arch).save(w.part_dir("fast_model"))
        w.set_config("fast_model", {"max_items": WINDOW})
    rec = Recommender.from_release(
        tmp_path / "r", trace_store=None, history_store=None,
        settings=RecommenderSettings.load(num_threads=1, warmup=True),
    )  # fmt: skip
    # 64 positions: <bos>, a trace of up to 18 tokens and 3 answer tokens leave 42 for the
    # history, 4 tokens per item (3 SID tokens + the item token) -> 10 items, not 12 or 14.
    assert rec.history_window == 10
    history = tiny_release.history(0)
    out = rec.recommend(RecommendRequest("u0", history=history, k=5, num_beams=8))
    served = SimpleNamespace(index=index, fast_model=rec.fast_model)
    window = history[-rec.history_window :]
    assert _ids(out) == _reference(served, window, beams=8, k=5, excluded=history)
    # The item tokens matter: the same SIDs with other item tokens rank differently.
    with torch.no_grad():
        rec.fast_model.model.get_input_embeddings().weight[vocab.item_offset :].normal_(0.0, 0.3)
    again = rec.recommend(RecommendRequest("u0", history=history, k=5, num_beams=8))
    assert [it.score for it in again.items] != [it.score for it in out.items]
    # With an item head (recorded in the release) the whole beam is re-ranked by it.
    headed = Recommender(
        rec.fast_model, index, release_version="r", trace_store=None, history_store=None,
        settings=RecommenderSettings.load(num_threads=1, warmup=False), trained_window=WINDOW,
        item_head_weight=2.0,
    )  # fmt: skip
    got = headed.recommend(RecommendRequest("u0", history=history, k=5, num_beams=8))
    catalog = index.catalog
    idx = [catalog.index_of(i) for i in window]
    ids, mask = left_pad([encode(vocab, index.sids.codes[idx], items=np.array(idx))])
    exclusion = Exclusion.build(index.trie, [[catalog.index_of(i) for i in history]])
    model = rec.fast_model.model
    beam = constrained_beam_search(
        HFModelStep(model), ids, mask, index.trie, vocab.sid_offsets,
        BeamSearchConfig(num_beams=8, num_return=8), exclusion,
        normalize_over=vocab.item_offset,
    )  # fmt: skip
    with torch.inference_mode():  # the item tokens' logits after the prompt, computed here
        head = item_head_logits(vocab, model(input_ids=ids).logits[:, -1], beam.items)
    want, scores = rerank(beam.items, beam.scores, head, 2.0, 5)
    assert _ids(got) == [catalog.item_ids[i] for i in want[0].tolist()]
    np.testing.assert_allclose([it.score for it in got.items], scores[0].numpy(), rtol=1e-4)
    with pytest.raises(ReleaseError, match="item tokens"):
        Recommender(
            tiny_release.fast_model, index, release_version="r", trace_store=None,
            history_store=None, settings=RecommenderSettings.load(num_threads=1, warmup=False),
            item_head_weight=1.0,
        )  # fmt: skip


def test_from_release_refuses_a_release_without_fast_model(
    tmp_path: Any, tiny_release: Any
) -> None:
    from fast_path.settings import RecommenderSettings
    from sid_index.release import ReleaseWriter

    with ReleaseWriter(tmp_path / "r") as w:
        tiny_release.index.save(w.part_dir("sid_index"))
    with pytest.raises(ReleaseError, match="fast_model"):
        Recommender.from_release(
            tmp_path / "r", trace_store=None, history_store=None,
            settings=RecommenderSettings.load(),
        )  # fmt: skip


def test_invalid_requests_raise_named_errors(make_recommender: Any, tiny_release: Any) -> None:
    rec = make_recommender()
    h = tiny_release.history(1)
    with pytest.raises(UnknownItemError) as info:
        rec.recommend(RecommendRequest("u", history=(h[0], "nope-1", "nope-2", "nope-1")))
    assert info.value.item_ids == ("nope-1", "nope-2")
    assert isinstance(info.value, RequestError)
    for bad in (
        RecommendRequest("u", history=h, k=0),
        RecommendRequest("u", history=h, k=12, num_beams=10),
        RecommendRequest("u", history=h, k=101, num_beams=128),
        RecommendRequest("u", history=h, num_beams=129),
        RecommendRequest("", history=h),
        RecommendRequest("u", history=h, domains=("books",)),
    ):
        with pytest.raises(RequestError):
            rec.validate(bad)
    strict = make_recommender(cold_start=False)
    with pytest.raises(EmptyHistoryError):
        strict.recommend(RecommendRequest("u", history=()))
    with pytest.raises(EmptyHistoryError):
        strict.recommend(RecommendRequest("u"))  # no history store to read from


def test_cold_start_decodes_from_bos(make_recommender: Any, tiny_release: Any) -> None:
    out = make_recommender().recommend(RecommendRequest("new", history=(), k=6, num_beams=6))
    assert len(out.items) == 6 and out.history_source == "request"
    assert _ids(out) == _reference(tiny_release, (), beams=6, k=6)
    none = make_recommender().recommend(RecommendRequest("new", k=3, num_beams=6))
    assert none.history_source == "none" and _ids(none) == _ids(out)[:3]


def test_history_is_truncated_to_the_window(make_recommender: Any, tiny_release: Any) -> None:
    long = tiny_release.history(2) + tiny_release.history(3) + tiny_release.history(4)
    assert len(long) > WINDOW
    out = make_recommender().recommend(
        RecommendRequest("u", history=long, k=4, num_beams=8, exclude_seen=False)
    )
    assert _ids(out) == _reference(tiny_release, long, beams=8, k=4)


# ---- traces ------------------------------------------------------------------------------------


def test_fresh_trace_is_used_at_the_end_of_the_prompt(
    make_recommender: Any, trace_store: RedisTraceStore, tiny_release: Any
) -> None:
    history = tiny_release.history(5)
    codes = tiny_release.index.sids.codes
    catalog = tiny_release.index.catalog
    a = tuple(int(c) for c in codes[catalog.index_of(history[-1])][:2])
    interests = [((a[0],), 0.4, "broad"), (a, 0.9, "narrow"), ((5, 5), 0.1, "elsewhere")]
    trace_store.put(_trace("u5", history, interests))
    rec = make_recommender(trace_store)
    out = rec.recommend(RecommendRequest("u5", history=history, k=8, num_beams=10, explain=True))
    assert out.trace_status == "hit" and out.trace_used
    assert out.explanation is not None
    assert out.explanation.persona == "weekend cook"
    assert out.explanation.interests == ("broad", "narrow", "elsewhere")
    assert out.explanation.transition == "from pans to spices"
    # Interests go into the prompt best (highest weight) first; the trace after all items.
    tokens = TraceTokens(2, (a, (a[0],), (5, 5)))
    assert _ids(out) == _reference(
        tiny_release, history, beams=10, k=8, trace=tokens, excluded=history
    )
    for it in out.items:  # the longest interest prefix of the item's SID names its interest
        sid = tuple(int(c) for c in codes[catalog.index_of(it.item_id)])
        want = None
        for prefix, _, label in sorted(interests, key=lambda x: len(x[0])):
            if sid[: len(prefix)] == prefix:
                want = label
        assert it.interest == want
    off = rec.recommend(RecommendRequest("u5", history=history, k=8, num_beams=10, use_trace=False))
    assert off.trace_status == "disabled" and not off.trace_used and off.explanation is None
    assert _ids(off) == _reference(tiny_release, history, beams=10, k=8, excluded=history)
    assert all(it.interest is None for it in off.items)
    assert _ids(off) != _ids(out)  # the trace does reach the model


def test_items_are_labelled_with_the_longest_matching_interest(
    make_recommender: Any, trace_store: RedisTraceStore, tiny_release: Any
) -> None:
    history = tiny_release.history(19)
    catalog, codes = tiny_release.index.catalog, tiny_release.index.sids.codes
    pick = next(i for i in catalog.item_ids if i not in history)
    sid = tuple(int(c) for c in codes[catalog.index_of(pick)])
    interests = [(sid[:1], 0.2, "broad"), (sid[:2], 0.5, "narrow")]
    trace_store.put(_trace("u19", history, interests, candidates=[(pick, 1.0)]))
    rec = make_recommender(trace_store, blend="interleave")
    out = rec.recommend(RecommendRequest("u19", history=history, k=6, num_beams=6))
    labels = {it.item_id: it.interest for it in out.items}
    assert labels[pick] == "narrow"  # the reasoner's candidate, second in the list
    for it in out.items:
        item_sid = tuple(int(c) for c in codes[catalog.index_of(it.item_id)])
        want = "narrow" if item_sid[:2] == sid[:2] else "broad" if item_sid[0] == sid[0] else None
        assert it.interest == want


def test_stale_old_and_foreign_traces_degrade_to_no_trace(
    make_recommender: Any, trace_store: RedisTraceStore, tiny_release: Any
) -> None:
    history = tiny_release.history(6)
    no_trace = _reference(tiny_release, history, beams=8, k=5, excluded=history)
    rec = make_recommender(trace_store, trace_max_age_s=600.0)
    trace_store.put(_trace("stale", history[:-1]))  # computed before the newest event
    trace_store.put(_trace("old", history, created_at=time.time() - 3600))
    trace_store.put(_trace("foreign", history, interests=[((0, 0, 0, 0), 1.0, "x")]))
    for user in ("stale", "old", "foreign"):
        out = rec.recommend(RecommendRequest(user, history=history, k=5, num_beams=8, explain=True))
        assert out.trace_status == "stale" and not out.trace_used, user
        assert out.explanation is None
        assert _ids(out) == no_trace
    miss = rec.recommend(RecommendRequest("nobody", history=history, k=5, num_beams=8))
    assert miss.trace_status == "miss" and _ids(miss) == no_trace


def test_a_lagging_trace_goes_before_the_newer_events(
    make_recommender: Any, trace_store: RedisTraceStore, tiny_release: Any
) -> None:
    history = tiny_release.history(7)
    trace_store.put(_trace("lag", history[:-2], interests=[((1,), 1.0, "one")]))
    strict = make_recommender(trace_store)
    assert strict.recommend(RecommendRequest("lag", history=history)).trace_status == "stale"
    out = make_recommender(trace_store, trace_max_lag=3).recommend(
        RecommendRequest("lag", history=history, k=5, num_beams=8)
    )
    assert out.trace_status == "hit"
    cut = min(len(history), WINDOW) - 2  # two newest events follow the trace
    tokens = TraceTokens(2, ((1,),))
    assert _ids(out) == _reference(
        tiny_release, history, beams=8, k=5, trace=tokens, trace_at=cut, excluded=history
    )
    at_end = _reference(tiny_release, history, beams=8, k=5, trace=tokens, excluded=history)
    assert _ids(out) != at_end  # where the trace goes matters


def test_corrupt_trace_is_a_miss(
    make_recommender: Any, trace_store: RedisTraceStore, redis_client: Any, tiny_release: Any
) -> None:
    history = tiny_release.history(8)
    redis_client.set(trace_key("bad"), b"0000000000000001" + b"\x01garbage")
    out = make_recommender(trace_store).recommend(RecommendRequest("bad", history=history, k=5))
    assert out.trace_status == "miss" and len(out.items) == 5


@pytest.mark.parametrize("server", ["closed_port", "silent_server"])
def test_unreachable_redis_still_answers(
    server: str, make_recommender: Any, tiny_release: Any, request: pytest.FixtureRequest
) -> None:
    target = request.getfixturevalue(server)
    host, port = ("127.0.0.1", target) if isinstance(target, int) else target
    client = redis_client(
        RedisSettings(), f"redis://{host}:{port}/0",
        socket_timeout_s=0.05, connect_timeout_s=0.05, retries=0,
    )  # fmt: skip
    rec = make_recommender(
        RedisTraceStore(client, ttl_s=60.0),
        RedisHistoryStore(client),
        trace_budget_s=0.05,
        history_budget_s=0.05,
        cold_start=False,  # an outage still degrades to a cold start, not a client error
    )
    history = tiny_release.history(9)
    t0 = time.perf_counter()
    with_history, from_store = rec.recommend_batch(
        [RecommendRequest("a", history=history, k=4), RecommendRequest("b", k=4)]
    )
    elapsed = time.perf_counter() - t0
    assert with_history.trace_status == from_store.trace_status == "error"
    assert with_history.history_source == "request" and len(with_history.items) == 4
    assert from_store.history_source == "error" and len(from_store.items) == 4  # cold start
    assert _ids(from_store) == _reference(tiny_release, (), beams=20, k=4)
    assert elapsed < 2.0  # bounded by the budgets, not by socket defaults


def test_history_comes_from_the_store(
    make_recommender: Any, history_store: RedisHistoryStore, trace_store: RedisTraceStore,
    tiny_release: Any,
) -> None:  # fmt: skip
    history = tiny_release.history(10)
    history_store.append("u10", [*history, "retired-item"])  # unknown ids are skipped
    trace_store.put(_trace("u10", [*history, "retired-item"]))
    rec = make_recommender(trace_store, history_store)
    stored = rec.recommend(RecommendRequest("u10", k=6, num_beams=8))
    assert stored.history_source == "store" and stored.trace_status == "hit"
    assert not {it.item_id for it in stored.items} & set(history)
    given = rec.recommend(
        RecommendRequest("u10", history=history, k=6, num_beams=8, use_trace=False)
    )
    no_trace = rec.recommend(RecommendRequest("u10", k=6, num_beams=8, use_trace=False))
    assert _ids(no_trace) == _ids(given)


# ---- filters and blending ------------------------------------------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_filters_are_never_violated(make_recommender: Any, tiny_release: Any, data: Any) -> None:
    catalog = tiny_release.index.catalog
    rec = make_recommender()
    n = len(catalog)
    history = tuple(data.draw(st.lists(st.sampled_from(catalog.item_ids), max_size=15)))
    block = tuple(data.draw(st.lists(st.sampled_from(catalog.item_ids), max_size=60)))
    domains = data.draw(
        st.one_of(st.none(), st.lists(st.sampled_from(catalog.domain_names()), unique=True))
    )
    beams = data.draw(st.integers(1, 24))
    k = data.draw(st.integers(1, beams))
    exclude_seen = data.draw(st.booleans())
    req = RecommendRequest(
        "h", history=history, k=k, num_beams=beams, exclude_seen=exclude_seen,
        blocklist=block, domains=None if domains is None else tuple(domains),
    )  # fmt: skip
    out = rec.recommend(req)
    got = [catalog.index_of(i) for i in _ids(out)]
    banned = set(block) | (set(history) if exclude_seen else set())
    allowed = [
        i for i in range(n)
        if catalog.item_ids[i] not in banned and (domains is None or catalog.domains[i] in domains)
    ]  # fmt: skip
    assert set(got) <= set(allowed)
    assert len(got) == len(set(got)) == min(k, len(allowed))


@pytest.mark.parametrize("policy", ["interleave", "score_mix(0.5)"])
def test_blended_candidates_respect_filters(
    policy: str, make_recommender: Any, trace_store: RedisTraceStore, tiny_release: Any
) -> None:
    catalog = tiny_release.index.catalog
    history = tiny_release.history(11)
    domain = catalog.domains[catalog.index_of(history[-1])]
    in_domain = [i for i, d in zip(catalog.item_ids, catalog.domains, strict=True) if d == domain]
    fresh = [i for i in in_domain if i not in history]
    other = next(i for i, d in zip(catalog.item_ids, catalog.domains, strict=True) if d != domain)
    candidates = [
        (history[-1], 9.0),  # seen
        (fresh[0], 8.0),  # blocklisted below
        ("retired", 7.0),  # not in the catalogue
        (other, 6.0),  # outside the allowed domain
        (fresh[1], 5.0),
        (fresh[1], 4.0),  # duplicate
        (fresh[2], 3.0),
    ]
    trace_store.put(_trace("b", history, candidates=candidates))
    rec = make_recommender(trace_store, blend=policy)
    out = rec.recommend(
        RecommendRequest("b", history=history, k=10, num_beams=10, blocklist=(fresh[0],),
                         domains=(domain,))
    )  # fmt: skip
    ids = _ids(out)
    assert out.trace_used and len(ids) == len(set(ids)) == 10
    assert not set(ids) & ({history[-1], fresh[0], "retired", other} | set(history))
    assert all(catalog.domains[catalog.index_of(i)] == domain for i in ids)
    reasoner = [it.item_id for it in out.items if it.source == "reasoner"]
    assert reasoner and set(reasoner) <= {fresh[1], fresh[2]}
    if policy == "interleave":
        # The first reasoner slot holds the first surviving candidate not already placed.
        assert ids[1] == (fresh[1] if ids[0] != fresh[1] else fresh[2])
    no_trace = rec.recommend(
        RecommendRequest("b", history=history, k=10, num_beams=10, blocklist=(fresh[0],),
                         domains=(domain,), use_trace=False)
    )  # fmt: skip
    assert all(it.source == "fast" for it in no_trace.items)


# ---- batching --------------------------------------------------------------------------------


def _mixed_requests(release: Any) -> list[RecommendRequest]:
    catalog = release.index.catalog
    doms = tuple(catalog.domain_names()[:2])
    return [
        RecommendRequest("t12", history=release.history(12), k=5, num_beams=8, explain=True),
        RecommendRequest("u13", history=release.history(13), k=3, num_beams=8, domains=doms),
        RecommendRequest("u14", history=(), k=4, num_beams=4),
        RecommendRequest("u15", history=release.history(15), k=8, num_beams=16,
                         blocklist=release.history(16)),
        RecommendRequest("t12", history=release.history(12)[:-1], k=5, num_beams=8),
        RecommendRequest("u17", history=release.history(17) * 3, k=2, num_beams=4,
                         exclude_seen=False),
    ]  # fmt: skip


@pytest.mark.parametrize("decoder", ["shared_prefix", "hf"])
def test_batch_equals_single_requests(
    decoder: str, make_recommender: Any, trace_store: RedisTraceStore, tiny_release: Any
) -> None:
    trace_store.put(_trace("t12", tiny_release.history(12), interests=[((2,), 1.0, "two")]))
    rec = make_recommender(trace_store, blend="interleave", decoder=decoder)
    requests = _mixed_requests(tiny_release)
    batch = rec.recommend_batch(requests)
    for req, got in zip(requests, batch, strict=True):
        alone = rec.recommend(req)
        assert _ids(got) == _ids(alone)
        np.testing.assert_allclose(
            [it.score for it in got.items], [it.score for it in alone.items], atol=1e-4
        )
        assert (got.trace_status, got.explanation) == (alone.trace_status, alone.explanation)
    assert [r.trace_status for r in batch][:1] == ["hit"] and batch[4].trace_status == "stale"


def test_outcomes_keep_one_bad_request_from_failing_the_batch(
    make_recommender: Any, tiny_release: Any
) -> None:
    rec = make_recommender()
    good = RecommendRequest("g", history=tiny_release.history(18), k=3)
    out = rec.recommend_outcomes([good, RecommendRequest("x", history=("nope",)), good])
    assert isinstance(out[1], UnknownItemError)
    assert isinstance(out[0], Recommendation) and isinstance(out[2], Recommendation)
    assert _ids(out[0]) == _ids(out[2])
    with pytest.raises(UnknownItemError):
        rec.recommend_batch([good, RecommendRequest("x", history=("nope",))])


def test_concurrent_calls_are_safe(make_recommender: Any, tiny_release: Any) -> None:
    rec = make_recommender()
    requests = [
        RecommendRequest(f"c{u}", history=tiny_release.history(u), k=4, num_beams=6)
        for u in range(20, 28)
    ]
    expected = [_ids(r) for r in rec.recommend_batch(requests)]
    results: dict[int, list[list[str]]] = {}

    def work(t: int) -> None:
        torch.set_num_threads(1)
        results[t] = [_ids(rec.recommend(r)) for r in requests]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(results[t] == expected for t in range(3))
