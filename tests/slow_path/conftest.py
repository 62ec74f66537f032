"""Fixtures of the slow-path worker tests: a small release (synthetic catalogue, Semantic IDs
from the hashing embedder) and its dataset. Built once per session, in a few seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sid_index.records import Dataset
from sid_index.sid_index import SIDIndex

SP_DATASET = "synthetic:users=200,items=300,seed=1"
"""The dataset of the test release (200 users, 300 items)."""


def build_test_release(out: Path, spec: str = SP_DATASET, version: str = "test-v1") -> Path:
    """A release with only a `sid_index/` part (levels 8 × 8 + disambiguation)."""
    from sid_index.datasets.registry import load_dataset
    from sid_index.embedder import HashingEmbedder
    from sid_index.item_index import ItemIndexConfig
    from sid_index.release import ReleaseWriter
    from sid_index.rq_kmeans import RQKMeansConfig
    from sid_index.sid_builder import SIDBuildConfig
    from sid_index.sid_index import SIDIndexConfig

    data = load_dataset(spec)
    config = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(8, 8), niter=10)),
        index=ItemIndexConfig(kind="flat"),
    )
    index = SIDIndex.build(data, config, HashingEmbedder())
    with ReleaseWriter(out, version=version) as writer:
        index.save(writer.part_dir("sid_index"))
        writer.set_config("sid_index", {"dataset": spec, "dataset_name": data.name})
    return out


@pytest.fixture(scope="session")
def sp_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Path of the session's test release."""
    yield build_test_release(tmp_path_factory.mktemp("sp") / "release")


@pytest.fixture(scope="session")
def sp_index(sp_release: Path) -> SIDIndex:
    """The test release's SID index."""
    return SIDIndex.load(sp_release / "sid_index")


@pytest.fixture(scope="session")
def sp_dataset() -> Dataset:
    """The test release's dataset."""
    from sid_index.datasets.registry import load_dataset

    return load_dataset(SP_DATASET)


@pytest.fixture(scope="session")
def sp_tiny_lm(sp_index: SIDIndex) -> tuple[object, object]:
    """(model, tokenizer): a randomly initialised 2-layer Llama with the reasoner's vocabulary
    (byte-level BPE on the catalogue titles + every CoT-format token, 12 personas)."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from slow_path.cot_format import special_tokens

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        sp_index.catalog.titles,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>",
        clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tokenizer.add_tokens(
        [AddedToken(t, normalized=False, special=False)
         for t in special_tokens(sp_index.sids.level_sizes, 12)]
    )  # fmt: skip
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: on a shared 2-core box OpenMP threads spin against other
    processes and make tiny models orders of magnitude slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
