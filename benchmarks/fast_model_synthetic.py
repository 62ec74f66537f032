"""Does the fast model find the planted persona signal? (run by hand)

    .venv/bin/python -m benchmarks.fast_model_synthetic [--epochs 15]

For each synthetic configuration: Semantic IDs (hashing embedder, 16x16 levels, to keep the
run short), one fast model trained with the persona-oracle teacher and trace dropout, then
the same model on the test split with the oracle trace and with no trace, next to the
most-popular baseline. Writes the section "## Fast model: trace vs no trace (synthetic)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from benchmarks.results_file import replace_section
from fast_path.fast_model import FastModel, FastModelConfig, build_model
from fast_path.vocab import FastVocab
from sid_index.datasets.registry import load_dataset
from sid_index.datasets.splits import leave_one_out
from sid_index.embedder import make_embedder
from sid_index.rq_kmeans import RQKMeansConfig
from sid_index.sid_builder import SIDBuildConfig
from sid_index.sid_index import SIDIndex, SIDIndexConfig
from trainer.baselines.popularity import evaluate_popularity
from trainer.fast_eval import evaluate_fast
from trainer.fast_trainer import FastTrainConfig, train_fast_model
from trainer.teachers import DominantPrefixTeacher, PersonaOracleTeacher

SECTION = "## Fast model: trace vs no trace (synthetic)"
SPECS = (
    "synthetic:users=1000,items=300,seed=0,min_seq_len=4,max_seq_len=10,"
    "interest_strength=0.3,transition_strength=0.2",
    "synthetic:users=1500,items=400,seed=0,min_seq_len=4,max_seq_len=10",
)


def run(spec: str, epochs: int) -> dict[str, object]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    ds = load_dataset(spec)
    assert ds.personas is not None
    cfg = SIDIndexConfig(sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(16, 16))))
    index = SIDIndex.build(ds, cfg, make_embedder("hashing"))
    split = leave_one_out(ds.interactions)
    codes = index.sids.codes
    oracle = PersonaOracleTeacher(ds.personas, DominantPrefixTeacher(codes, max_interests=3))
    vocab = FastVocab(index.sids.level_sizes, num_personas=32)
    mcfg = FastModelConfig(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=192
    )
    fm = FastModel(build_model(vocab, mcfg), vocab, mcfg)
    seqs = [
        split.train_items[split.train_indptr[u] : split.train_indptr[u + 1]]
        for u in range(len(split))
    ]
    valid = split.valid_inputs()
    vusers = split.user_index[valid.users]

    def validate(m: FastModel) -> dict[str, float]:
        r = evaluate_fast(m, index.trie, codes, valid, vusers, oracle, limit=300)
        return {"valid/recall@10": r.recall[10]}

    with tempfile.TemporaryDirectory() as tmp:
        train_fast_model(
            fm,
            codes,
            split.user_index,
            seqs,
            oracle,
            FastTrainConfig(epochs=epochs, patience=100, lr=3e-3, warmup_steps=20),
            Path(tmp),
            validate,
            resume=False,
        )
        best = FastModel.load(Path(tmp) / "best")
    test = split.test_inputs()
    users = split.user_index[test.users]
    trace = evaluate_fast(best, index.trie, codes, test, users, oracle)
    none = evaluate_fast(best, index.trie, codes, test, users, None)
    _, pop = evaluate_popularity(split, len(ds.catalog))
    return {
        "spec": spec,
        "trace": trace,
        "none": none,
        "pop": pop,
        "users": len(test),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        SECTION,
        "",
        "Same model, same test users, evaluated with the planted persona (oracle trace: persona "
        "token + dominant SID prefixes) and with no trace. Full catalogue, beam 20. The first "
        "configuration is the one `tests/trainer/test_trace_signal.py` asserts on.",
        "",
        "| dataset | test users | mode | R@5 | N@5 | R@10 | N@10 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for spec in SPECS:
        r = run(spec, args.epochs)
        for mode, key in (("oracle trace", "trace"), ("no trace", "none"), ("most popular", "pop")):
            m = r[key]
            lines.append(
                f"| `{spec.split(':', 1)[1]}` | {r['users']} | {mode} | {m.recall[5]:.4f} | "  # type: ignore[attr-defined]
                f"{m.ndcg[5]:.4f} | {m.recall[10]:.4f} | {m.ndcg[10]:.4f} |"  # type: ignore[attr-defined]
            )
        print(lines[-3:], f"{r['seconds']:.0f}s", flush=True)
    lines += [
        "",
        f"Machine: {platform.machine()} CPU, {args.threads} torch thread(s), no GPU, shared with "
        f"other jobs. Date: {date.today()}. {args.epochs} epochs. Reproduce: "
        f"`.venv/bin/python -m benchmarks.fast_model_synthetic --epochs {args.epochs}`.",
    ]
    replace_section(SECTION, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
