"""Fast model training: batch construction (labels never on trace tokens) and checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fast_path.fast_model import FastModel, FastModelConfig, build_model
from fast_path.vocab import TRACE, TRACE_END, FastVocab
from sid_index.errors import ConfigError
from trainer.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from trainer.fast_trainer import (
    DecodableLogits,
    FastTrainConfig,
    add_dropout_hooks,
    draw_trace_cuts,
    item_head_targets,
    make_batch,
    next_token_loss,
    train_fast_model,
)
from trainer.teachers import DominantPrefixTeacher

CODES = np.array([[i % 4, i // 4, 0] for i in range(12)], dtype=np.int32)


def _fm(item_buckets: int = 0) -> FastModel:
    vocab = FastVocab(level_sizes=(4, 3, 1), num_personas=2, item_buckets=item_buckets)
    cfg = FastModelConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=32,
        max_positions=256,
    )
    return FastModel(build_model(vocab, cfg), vocab, cfg)


def test_batch_labels_cover_items_only() -> None:
    fm = _fm()
    teacher = DominantPrefixTeacher(CODES, prefix_len=1)
    seqs = [np.arange(10) % 12, np.array([3, 5, 7])]
    cfg = FastTrainConfig(trace_dropout=0.0, max_items=8)
    ids, mask, labels = make_batch(fm, CODES, [0, 1], seqs, teacher, cfg, np.random.default_rng(0))
    for row in range(2):
        n_items = min(len(seqs[row]), cfg.max_items)
        tok = ids[row][mask[row].bool()]
        lab = labels[row][mask[row].bool()]
        # exactly the history's SID tokens are labelled, in order
        assert int((lab != -100).sum()) == n_items * 3
        assert (tok == TRACE).sum() == 1 and (tok == TRACE_END).sum() == 1
        start, end = int((tok == TRACE).nonzero()), int((tok == TRACE_END).nonzero())
        assert (lab[start : end + 1] == -100).all()
        assert start >= 1 + 3  # the trace follows at least one history item
        expected = torch.from_numpy(fm.vocab.sid_tokens(CODES[seqs[row][-n_items:]]).reshape(-1))
        assert torch.equal(lab[lab != -100], expected)
    # padding is masked and unlabelled
    assert (labels[mask == 0] == -100).all()


def test_trace_dropout_one_means_no_trace() -> None:
    fm = _fm()
    cfg = FastTrainConfig(trace_dropout=1.0)
    ids, _, _ = make_batch(
        fm, CODES, [0], [np.arange(6)], DominantPrefixTeacher(CODES), cfg, np.random.default_rng(0)
    )
    assert not (ids == TRACE).any()


def test_checkpoint_round_trip_restores_optimizer(tmp_path: Path) -> None:
    fm = _fm()
    opt = torch.optim.AdamW(fm.model.parameters(), lr=1e-3)
    ids = torch.tensor([[1, 9, 13, 16, 10, 14, 16]])
    fm.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "last", fm.model, opt, {"epoch": 3, "best": 0.5})
    assert load_trainer_state(tmp_path / "last")["epoch"] == 3
    opt2 = torch.optim.AdamW(fm.model.parameters(), lr=1e-3)
    restore_optimizer(tmp_path / "last", opt2)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and len(s1) > 0
    for pid in s1:
        torch.testing.assert_close(s1[pid]["exp_avg"], s2[pid]["exp_avg"])
        torch.testing.assert_close(s1[pid]["exp_avg_sq"], s2[pid]["exp_avg_sq"])
        assert float(s1[pid]["step"]) == float(s2[pid]["step"])


def test_next_token_loss_matches_transformers_loss() -> None:
    fm = _fm()
    codes = np.array([[0, 1], [2, 3], [1, 0], [3, 2]])
    ids, mask, labels = make_batch(
        fm, codes, [0, 1], [np.array([0, 1, 2]), np.array([3, 2])], None, FastTrainConfig(),
        np.random.default_rng(0),
    )  # fmt: skip
    out = fm.model(input_ids=ids, attention_mask=mask, labels=labels)
    ours = next_token_loss(out.logits, labels)
    torch.testing.assert_close(ours, out.loss.float(), rtol=1e-5, atol=1e-6)
    smoothed = next_token_loss(out.logits, labels, label_smoothing=0.1)
    assert smoothed.item() != ours.item()


def test_dropout_hooks_act_in_training_only_and_come_off() -> None:
    fm = _fm()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    fm.model.eval()
    with torch.no_grad():
        clean = fm.model(input_ids=ids).logits
    handles = add_dropout_hooks(fm.model, 0.5)
    # embed_tokens + one o_proj and one down_proj per layer
    assert len(handles) == 1 + 2 * fm.config.num_layers
    with torch.no_grad():
        torch.testing.assert_close(fm.model(input_ids=ids).logits, clean)  # eval: no dropout
        fm.model.train()
        noisy = fm.model(input_ids=ids).logits
        assert not torch.allclose(noisy, clean)
        for h in handles:
            h.remove()
        fm.model.eval()
        torch.testing.assert_close(fm.model(input_ids=ids).logits, clean)
    assert not any(m._forward_hooks for m in fm.model.modules())
    assert add_dropout_hooks(fm.model, 0.0) == []


class _BatchedTeacher:
    """A teacher with a batched `precompute_traces`, like the reasoner's: `trace` of a history
    that was not precomputed is an error here, so the test sees every unbatched request."""

    name = "batched"

    def __init__(self) -> None:
        self.inner = DominantPrefixTeacher(CODES)
        self.cache: dict[bytes, object] = {}
        self.calls = 0

    def precompute_traces(
        self, histories: list[np.ndarray], *, show_progress: bool = False
    ) -> None:
        self.calls += 1
        for h in histories:
            self.cache[np.asarray(h).tobytes()] = self.inner.trace(0, h)

    def trace(self, user: int, history: np.ndarray) -> object:
        return self.cache[np.asarray(history).tobytes()]


def test_fixed_trace_cuts_are_precomputed_in_one_batch(tmp_path: Path) -> None:
    seqs = [(np.arange(n) + i) % 12 for i, n in enumerate((2, 5, 9, 12, 1))]  # distinct
    cfg = FastTrainConfig(epochs=2, batch_size=2, trace_dropout=0.0, max_items=6, trace_cuts=2)
    cuts = draw_trace_cuts(seqs, cfg, seed=0)
    for seq, cs in zip(seqs, cuts, strict=True):
        n = min(len(seq), cfg.max_items)
        assert len(cs) == (0 if n < 2 else len(set(cs.tolist()))) <= 2
        assert all(1 <= c <= n - 1 for c in cs)
    teacher = _BatchedTeacher()
    fm = _fm()
    result = train_fast_model(
        fm, CODES, np.arange(len(seqs)), seqs, teacher, cfg, tmp_path,
        lambda _m: {"valid/recall@10": 0.0}, resume=False,
    )  # fmt: skip
    assert result.epochs_run == 2
    assert teacher.calls == 1  # one batched decode; every trace() during training was a hit
    assert len(teacher.cache) == sum(len(c) for c in cuts)


def test_item_tokens_are_read_but_never_labelled() -> None:
    fm = _fm(item_buckets=12)
    teacher = DominantPrefixTeacher(CODES, prefix_len=1)
    seqs = [np.arange(10) % 12, np.array([3, 5, 7])]
    cfg = FastTrainConfig(trace_dropout=0.0, max_items=8)
    ids, mask, labels = make_batch(fm, CODES, [0, 1], seqs, teacher, cfg, np.random.default_rng(0))
    for row in range(2):
        window = seqs[row][-cfg.max_items :]
        tok, lab = ids[row][mask[row].bool()], labels[row][mask[row].bool()]
        is_item_token = tok >= fm.vocab.item_offset
        assert torch.equal(tok[is_item_token], torch.from_numpy(fm.vocab.item_tokens(window)))
        assert (lab[is_item_token] == -100).all()
        expected = torch.from_numpy(fm.vocab.sid_tokens(CODES[window]).reshape(-1))
        assert torch.equal(lab[lab != -100], expected)
        start = int((tok == TRACE).nonzero())
        assert tok[start - 1] >= fm.vocab.item_offset  # the trace follows a whole item


def test_decodable_logits_skip_item_tokens_and_match_the_hf_head() -> None:
    fm = _fm(item_buckets=12)
    ids, mask, _ = make_batch(
        fm, CODES, [0], [np.arange(6)], None, FastTrainConfig(), np.random.default_rng(0)
    )
    fm.model.eval()
    ours, no_items = DecodableLogits(fm.model, fm.vocab.item_offset)(ids, mask)
    assert no_items is None
    full = fm.model(input_ids=ids, attention_mask=mask).logits
    assert ours.shape[-1] == fm.vocab.item_offset
    torch.testing.assert_close(ours, full[..., : fm.vocab.item_offset])
    # no item tokens: the plain HF forward
    plain = _fm()
    ids, mask, _ = make_batch(
        plain, CODES, [0], [np.arange(6)], None, FastTrainConfig(), np.random.default_rng(0)
    )
    plain.model.eval()
    torch.testing.assert_close(
        DecodableLogits(plain.model, plain.vocab.size)(ids, mask)[0],
        plain.model(input_ids=ids, attention_mask=mask).logits,
    )


def test_item_head_targets_are_the_next_items_tokens_at_the_positions_before_them() -> None:
    fm = _fm(item_buckets=5)
    teacher = DominantPrefixTeacher(CODES, prefix_len=1)
    seqs = [np.array([4, 9, 2, 11]), np.array([3, 5])]
    cfg = FastTrainConfig(trace_dropout=0.0, max_items=8)
    ids, _, labels = make_batch(fm, CODES, [0, 1], seqs, teacher, cfg, np.random.default_rng(1))
    rows, cols, targets = item_head_targets(fm.vocab, ids, labels)
    for row, seq in enumerate(seqs):
        mine = rows == row
        # one target per history item, in order, each its item token (index mod 5)
        assert targets[mine].tolist() == (seq % 5).tolist()
        # predicted from the position just before the item's first SID token
        first = ids[row, cols[mine] + 1] - int(fm.vocab.sid_offsets[0])
        assert first.tolist() == CODES[seq, 0].tolist()
    fm.model.eval()
    _, item_logits = DecodableLogits(fm.model, fm.vocab.item_offset)(ids, _, rows, cols)
    full = fm.model(input_ids=ids).logits
    assert item_logits is not None and item_logits.shape == (len(rows), 5)
    torch.testing.assert_close(item_logits, full[rows, cols, fm.vocab.item_offset :])


def test_item_loss_trains_the_item_head_and_needs_item_tokens(tmp_path: Path) -> None:
    seqs = [np.array([i % 12, (i + 1) % 12, (i + 2) % 12, (i + 3) % 12]) for i in range(24)]
    users = np.arange(len(seqs))
    cfg = FastTrainConfig(
        epochs=8, batch_size=8, lr=5e-3, warmup_steps=1, item_loss_weight=1.0, patience=8
    )
    with pytest.raises(ConfigError, match="item tokens"):
        train_fast_model(_fm(), CODES, users, seqs, None, cfg, tmp_path / "a", lambda m: {})
    fm = _fm(item_buckets=12)
    ids, mask, labels = make_batch(
        fm, CODES, users[:8], seqs[:8], None, FastTrainConfig(), np.random.default_rng(0)
    )
    rows, cols, targets = item_head_targets(fm.vocab, ids, labels)

    def item_loss(model: FastModel) -> float:
        model.model.eval()
        with torch.no_grad():
            _, logits = DecodableLogits(model.model, model.vocab.item_offset)(ids, mask, rows, cols)
        assert logits is not None
        return float(torch.nn.functional.cross_entropy(logits, targets))

    before = item_loss(fm)
    result = train_fast_model(
        fm, CODES, users, seqs, None, cfg, tmp_path / "b",
        lambda m: {"valid/recall@10": -item_loss(m)},
    )  # fmt: skip
    assert result.epochs_run == 8
    assert item_loss(fm) < before - 0.5  # the next item is learnable: i -> i + 1 (mod 12)
