"""Fixtures of the slow-path worker tests: a small release (synthetic catalogue, Semantic IDs
from the hashing embedder) and its dataset, a tiny random LM with the reasoner's vocabulary,
and real `reasonrec slow-path worker` processes on the session's Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# -- real worker processes ----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]

TEST_PLUGIN = '''
"""Test-only reasoner backends (loaded by the worker as `sp_test_plugin:<name>`)."""
import os
import time

from slow_path.reasoner.base import ReasonerOutput
from slow_path.reasoner.rule_backend import RuleReasoner


class Slow(RuleReasoner):
    def reason(self, requests):
        time.sleep(float(os.environ.get("SP_TEST_DELAY_S", "0.3")))
        return super().reason(requests)


class GarbageForSome(RuleReasoner):
    """Users whose id ends in 0 get text without a usable thought."""

    def reason(self, requests):
        out = super().reason(requests)
        return [
            ReasonerOutput("<persona>oops</think><answer><a_999>", o.answers, o.scores, 5)
            if q.user_id.endswith("0") else o
            for q, o in zip(requests, out)
        ]


def slow(config, index):
    return Slow(config, index)


def garbage(config, index):
    return GarbageForSome(config, index)
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """A `reasonrec slow-path worker` subprocess on loopback, with bounded waits."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        import subprocess
        import sys

        self.metrics_port = int(env["REASONREC_METRICS_PORT"])
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "slow-path", "worker", *args],
            env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def metrics(self, timeout: float = 5.0) -> str:
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout
        ) as r:
            return str(r.read().decode())

    def wait_metrics(self, timeout: float = 60.0) -> None:
        """Until /metrics answers (the worker serves it before anything else)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_tail()}")
            try:
                self.metrics(timeout=1.0)
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"worker /metrics did not come up:\n{self.log_tail()}")

    def sample(self, name: str) -> float:
        """Value of one unlabelled sample on /metrics."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not on /metrics")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        import signal

        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        import signal
        import subprocess

        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def worker_env(tmp_path: Path, redis_url: str, redis_client: object) -> dict[str, str]:
    """Environment of a test worker: the session's Redis, its own key prefix and queue,
    short broker timeouts, the test plugin importable."""
    import os
    import uuid

    (tmp_path / "sp_test_plugin.py").write_text(TEST_PLUGIN)
    tag = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "REDIS_URL": redis_url,
        "REASONREC_KEY_PREFIX": tag,
        "REASONREC_QUEUE": f"q-{tag}",
        "REASONREC_METRICS_PORT": str(free_port()),
        "REASONREC_TORCH_THREADS": "1",
        "REASONREC_VISIBILITY_TIMEOUT_S": "8",
        "REASONREC_SOFT_TIME_LIMIT_S": "2",
        "REASONREC_TIME_LIMIT_S": "3",
        "REASONREC_SOFT_SHUTDOWN_TIMEOUT_S": "0",
        "REASONREC_RETRY_BACKOFF_MAX_S": "1",
        "REASONREC_QUEUE_DEPTH_INTERVAL_S": "0.5",
    }


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start workers: `start_worker(args, **env_overrides)`; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(args: list[str], **env: str) -> WorkerProcess:
        w = WorkerProcess(args, {**worker_env, **env}, tmp_path / f"worker{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:  # tests that check a clean shutdown call w.stop() themselves
        w.kill()
        w.stop()
