"""Draw docs/architecture.png (run: `python docs/architecture_diagram.py`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {
    # name: (x, y, w, h, title, body, colour)
    "data": (
        0.2,
        7.6,
        2.6,
        1.0,
        "catalogue + interactions",
        "Amazon · MovieLens · synthetic",
        "#eeeeee",
    ),
    "sid": (
        0.2,
        5.7,
        2.6,
        1.3,
        "sid_index",
        "MiniLM → residual k-means\nSIDs · SIDTrie · FAISS",
        "#dbe9f6",
    ),
    "trainer": (
        0.2,
        3.4,
        2.6,
        1.7,
        "trainer",
        "reasoner: align → CoT SFT → RL\nfast model (trace dropout)\nbaselines · eval",
        "#e3f1dd",
    ),
    "release": (
        3.4,
        3.6,
        2.4,
        1.3,
        "release/",
        "manifest.json (sha256)\nsid_index · reasoner\nfast_model",
        "#fdf1d6",
    ),
    "slow": (
        3.4,
        0.6,
        2.6,
        1.9,
        "slow_path (Celery)",
        "reasoner: transformers | vLLM\nPersona → Interests →\nTransition → Trace",
        "#f6e0e0",
    ),
    "redis": (6.8, 0.8, 2.2, 1.4, "Redis", "rr:trace:{user}\nrr:hist:{user}\nbroker", "#f0e6f6"),
    "fast": (
        6.8,
        3.4,
        2.6,
        1.8,
        "fast_path",
        "Recommender · micro-batcher\nconstrained beam search\nover the SID trie",
        "#dbe9f6",
    ),
    "serving": (
        6.8,
        5.9,
        2.6,
        1.3,
        "serving",
        "FastAPI · gRPC · A/B router\nPrometheus metrics",
        "#e3f1dd",
    ),
    "client": (6.8, 7.8, 2.6, 0.8, "product service", "POST /v1/recommend · gRPC", "#eeeeee"),
}
ARROWS = [
    ("data", "sid", ""),
    ("sid", "trainer", ""),
    ("trainer", "release", "writes"),
    ("release", "slow", "reasoner"),
    ("release", "fast", "fast model + trie"),
    ("slow", "redis", "traces"),
    ("redis", "fast", "trace + history (budgeted)"),
    ("client", "serving", ""),
    ("serving", "fast", "requests · events"),
]


def _anchor(name: str, toward: str) -> tuple[float, float]:
    x, y, w, h, *_ = BOXES[name]
    tx, ty, tw, th, *_ = BOXES[toward]
    cx, cy, ox, oy = x + w / 2, y + h / 2, tx + tw / 2, ty + th / 2
    if abs(ox - cx) > abs(oy - cy) * 1.2:
        return (x + w, cy) if ox > cx else (x, cy)
    return (cx, y + h) if oy > cy else (cx, y)


def main() -> Path:
    fig, ax = plt.subplots(figsize=(10, 9))
    ax.set_xlim(0, 9.6)
    ax.set_ylim(0.3, 8.9)
    ax.axis("off")
    ax.text(1.5, 8.8, "offline (minutes to hours)", ha="center", fontsize=11, style="italic")
    ax.text(8.1, 8.8, "online (milliseconds)", ha="center", fontsize=11, style="italic")
    for x, y, w, h, title, body, colour in BOXES.values():
        ax.add_patch(
            FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555555", lw=1.2)
        )
        ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=11, weight="bold")
        ax.text(x + w / 2, y + h / 2 - 0.22, body, ha="center", va="center", fontsize=9)
    for a, b, label in ARROWS:
        start, end = _anchor(a, b), _anchor(b, a)
        ax.add_patch(
            FancyArrowPatch(
                start, end, arrowstyle="-|>", mutation_scale=14, lw=1.3, color="#333333"
            )
        )
        if label:
            ax.text(
                (start[0] + end[0]) / 2,
                (start[1] + end[1]) / 2 + 0.12,
                label,
                ha="center",
                fontsize=8.5,
                color="#333333",
                bbox={"fc": "white", "ec": "none", "pad": 1},
            )
    out = Path(__file__).with_name("architecture.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main())
