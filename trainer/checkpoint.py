"""Resumable training checkpoints without pickle.

A checkpoint directory holds the model as an HF `save_pretrained` directory (safetensors),
the optimizer state flattened into `optimizer.safetensors` (tensors) + `optimizer.json`
(param-group hyper-parameters and scalar state), and `trainer_state.json` (epoch, step,
best metric, patience counter, ...). It is written to a temp directory and renamed, so a
crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from sid_index.errors import ReleaseError

STATE_FILE = "trainer_state.json"


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = float(value)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, object]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, object],
    extra_files: dict[str, str] | None = None,
) -> None:
    """Atomically write model, optimizer and trainer state to `directory`."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if optimizer is not None:
        tensors, meta = _optimizer_to_flat(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_trainer_state(directory: Path) -> dict[str, object]:
    """The trainer state of a checkpoint (ReleaseError if it is not one)."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise ReleaseError(f"{directory} is not a checkpoint (no {STATE_FILE})")
    return dict(json.loads(path.read_text()))


def restore_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer state saved by `save_checkpoint` into `optimizer`."""
    tensors = load_file(str(directory / "optimizer.safetensors"))
    meta = json.loads((directory / "optimizer.json").read_text())
    _optimizer_from_flat(optimizer, tensors, meta)
