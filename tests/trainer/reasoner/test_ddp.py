"""The training loop under torchrun: 2 processes, gloo on CPU, a tiny model, a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch

    from slow_path.cot_format import PromptItem, render_answer, render_prompt
    from trainer.reasoner.model import ScratchArch, prepare_reasoner
    from trainer.reasoner.sft import SFTTrainConfig, train_sft

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    texts, samples = [], []

    class Sample:
        def __init__(self, prompt, completion):
            self.prompt, self.completion = prompt, completion

    for u in range(24):
        items = [PromptItem((u % 4, (u + j) % 4), f"item {u} {j} thing") for j in range(3)]
        samples.append(Sample(render_prompt(items, thinking=False), render_answer((u % 4, 1))))
        texts.append(samples[-1].prompt + samples[-1].completion)
    arch = ScratchArch(
        num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=2, intermediate_size=64,
        max_positions=256, bpe_vocab_size=300,
    )
    reasoner = prepare_reasoner(arch, (4, 4), 2, corpus_texts=texts, seed=0)
    cfg = SFTTrainConfig(epochs=2, batch_size=4, lr=1e-3, log_every=1, max_length=256)
    result = train_sft(reasoner, samples, cfg, out)
    rank = torch.distributed.get_rank()
    digest = float(sum(p.double().sum() for p in reasoner.model.parameters()))
    (out / f"rank{rank}.json").write_text(
        json.dumps({"steps": result.loop.steps, "world": torch.distributed.get_world_size(),
                    "digest": digest, "tokens": result.loop.tokens})
    )
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
    }
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(script), str(out),
        ],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    # 24 samples / 4 rows = 6 batches per epoch, 3 per rank: 6 steps in 2 epochs.
    assert ranks[0]["steps"] == ranks[1]["steps"] == 6
    # DDP kept the replicas identical.
    assert ranks[0]["digest"] == pytest.approx(ranks[1]["digest"], rel=1e-6)
    # Rank 0 wrote the checkpoint, the log and the final reasoner directory.
    state = json.loads((out / "sft" / "last" / "trainer_state.json").read_text())
    assert state["done"] and state["step"] == 6
    assert state["tokens"] == ranks[0]["tokens"]
    assert (out / "final" / "reasoner_vocab.json").is_file()
    log = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
