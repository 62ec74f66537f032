"""Chain-of-thought SFT: teach the aligned reasoner the three-part CoT and the answer.

Samples are `SFTSample`s from `trainer/cot/corpus.py`: thinking ones (prompt ends with
`<think>`, completion = persona → interests → transition → `</think><answer>` SID) mixed with
non-thinking ones (prompt ends with `<think></think><answer>`, completion = SID) at the
per-domain ratio the corpus builder chose. The loss covers the completion only.

Outputs: `out_dir/sft/` (metrics.jsonl, curves.png, resumable `last/`) and `out_dir/final/`,
the reasoner directory that goes into a release's `reasoner/` part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.reasoner.align import save_final
from trainer.reasoner.model import Reasoner
from trainer.reasoner.sft_data import PromptCompletion, tokenize_samples
from trainer.reasoner.train_loop import EvalFn, LoopConfig, LoopResult, train_causal_lm


@dataclass(frozen=True, slots=True)
class SFTTrainConfig(LoopConfig):
    """SFT settings (the shared loop settings with SFT defaults)."""

    epochs: int = 3
    """Passes over the samples."""
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    max_length: int = 768
    """Longest prompt + completion in tokens (long histories lose their oldest items)."""

    def __post_init__(self) -> None:
        LoopConfig.__post_init__(self)


@dataclass
class SFTResult:
    """Outcome of the SFT stage."""

    loop: LoopResult
    final_dir: Path
    """The SFT reasoner directory."""
    num_samples: int
    """Samples trained on (after dropping those that do not fit)."""
    num_thinking: int
    """Of the given samples, how many had a thought (`thinking` attribute true)."""
    truncated: int
    """Samples whose prompt was cut to fit `max_length`."""
    dropped: int
    """Samples whose completion alone did not fit."""


def train_sft(
    reasoner: Reasoner,
    samples: Sequence[PromptCompletion],
    cfg: SFTTrainConfig,
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = True,
) -> SFTResult:
    """Fine-tune `reasoner` in place on CoT samples and save `out_dir/final`.

    Args:
        samples: `SFTSample`s (anything with prompt/completion; `thinking` is counted if set).
        evaluate: rank-0 callback after every epoch (e.g. R2/R3 tiers on validation users).
        resume: continue from `out_dir/sft/last` when it exists.
    """
    data = tokenize_samples(reasoner.tokenizer, samples, cfg.max_length)
    loop = train_causal_lm(
        reasoner, data, cfg, out_dir / "sft", stage="sft", evaluate=evaluate, resume=resume
    )
    final = out_dir / "final"
    save_final(reasoner, final)
    thinking = sum(bool(getattr(s, "thinking", False)) for s in samples)
    return SFTResult(loop, final, len(data), thinking, data.truncated, data.dropped)
