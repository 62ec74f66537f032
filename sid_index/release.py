"""Release directories: the unit that the trainer produces and the serving path loads.

A release is one directory::

    release/
      manifest.json        format version, release version, created_at, sha256 + size of every
                           file, per-component configs and metrics, list of parts
      sid_index/ ...       catalogue, Semantic IDs, FAISS index
      reasoner/ ...        HF save_pretrained directory (safetensors)
      fast_model/ ...      HF save_pretrained directory (safetensors)

Writes are atomic: a `ReleaseWriter` stages everything in a sibling temp directory and only
renames it into place in `finalize()`, after hashing every file. An interrupted build leaves
the previous release (or nothing) in place, never a half-written one. `load_release` verifies
every checksum and refuses a tampered, partial or unknown-format release with a clear error.
No pickle: manifests are JSON, arrays are .npy (allow_pickle=False) or safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from sid_index.errors import ReleaseError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class FileEntry:
    """Checksum record of one file, relative to the release root."""

    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """The parsed `manifest.json` of a release."""

    version: str
    """Release version label (free-form, e.g. "2026-11-24T21-50-00Z" or "v3")."""
    created_at: str
    """ISO-8601 UTC time the release was finalized."""
    files: dict[str, FileEntry]
    """Relative POSIX path → checksum, for every file except the manifest itself."""
    parts: list[str]
    """Top-level component directories present (e.g. sid_index, reasoner, fast_model)."""
    configs: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per-component configuration used to build it."""
    metrics: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per-component metrics measured when it was built."""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": self.format_version,
                "version": self.version,
                "created_at": self.created_at,
                "parts": self.parts,
                "configs": self.configs,
                "metrics": self.metrics,
                "files": {
                    p: {"sha256": e.sha256, "size": e.size} for p, e in sorted(self.files.items())
                },
            },
            indent=2,
            sort_keys=False,
        )

    @classmethod
    def from_json(cls, text: str, source: Path) -> Manifest:
        try:
            raw = json.loads(text)
            fmt = int(raw["format_version"])
            if fmt > FORMAT_VERSION:
                raise ReleaseError(
                    f"{source}: release format {fmt} is newer than this reasonrec understands "
                    f"({FORMAT_VERSION}); upgrade reasonrec"
                )
            files = {
                str(p): FileEntry(sha256=str(e["sha256"]), size=int(e["size"]))
                for p, e in raw["files"].items()
            }
            return cls(
                version=str(raw["version"]),
                created_at=str(raw["created_at"]),
                files=files,
                parts=[str(p) for p in raw["parts"]],
                configs=dict(raw.get("configs", {})),
                metrics=dict(raw.get("metrics", {})),
                format_version=fmt,
            )
        except ReleaseError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReleaseError(f"{source}: malformed manifest ({exc!r})") from None


@dataclass(frozen=True, slots=True)
class Release:
    """A verified release on disk."""

    path: Path
    manifest: Manifest

    def part(self, name: str) -> Path:
        """Directory of one component; ReleaseError if the release lacks it."""
        if name not in self.manifest.parts:
            raise ReleaseError(
                f"release {self.path} has no {name!r} part (it has: "
                f"{', '.join(self.manifest.parts) or 'nothing'})"
            )
        return self.path / name

    def has_part(self, name: str) -> bool:
        return name in self.manifest.parts

    @property
    def version(self) -> str:
        return self.manifest.version


def _walk_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME
    )


def load_release(path: Path | str, *, require: Sequence[str] = (), verify: bool = True) -> Release:
    """Open a release, verifying every file's size and sha256 against the manifest.

    Args:
        path: the release directory.
        require: parts that must be present (e.g. ("sid_index", "fast_model")).
        verify: hash every file (default). Sizes and presence are always checked.

    Raises:
        ReleaseError: missing directory or manifest, malformed manifest, a missing, extra,
            resized or modified file, or a required part that is absent.
    """
    root = Path(path)
    if not root.is_dir():
        raise ReleaseError(f"release directory {root} does not exist")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ReleaseError(
            f"{root} is not a complete release: no {MANIFEST_NAME} (an interrupted build, "
            "or not a release directory)"
        )
    manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"), manifest_path)
    on_disk = {p.relative_to(root).as_posix(): p for p in _walk_files(root)}
    missing = sorted(set(manifest.files) - set(on_disk))
    if missing:
        raise ReleaseError(f"release {root} is partial: missing {missing[:5]}")
    extra = sorted(set(on_disk) - set(manifest.files))
    if extra:
        raise ReleaseError(f"release {root} has files not in its manifest: {extra[:5]}")
    for rel, entry in manifest.files.items():
        f = on_disk[rel]
        if f.stat().st_size != entry.size:
            raise ReleaseError(
                f"release {root}: {rel} has size {f.stat().st_size}, "
                f"manifest says {entry.size} (tampered or truncated)"
            )
        if verify and sha256_file(f) != entry.sha256:
            raise ReleaseError(f"release {root}: checksum mismatch for {rel} (tampered)")
    release = Release(root, manifest)
    for name in require:
        release.part(name)
    return release


class ReleaseWriter:
    """Builds a release in a staging directory and moves it into place atomically.

    Use as a context manager; an exception inside the block discards the staging directory
    and leaves any existing release untouched::

        with ReleaseWriter(out) as w:
            index.save(w.part_dir("sid_index"))
            w.set_metrics("sid_index", stats)
        # finalize() ran on clean exit
    """

    def __init__(
        self,
        out_dir: Path | str,
        *,
        version: str | None = None,
        overwrite: bool = False,
        base: Release | None = None,
    ) -> None:
        """Args:
        out_dir: final release directory.
        version: release version label (default: the UTC timestamp at finalize).
        overwrite: replace an existing non-empty `out_dir` (atomically, at finalize).
        base: an existing release whose parts, configs and metrics are carried over
            (e.g. `train fast` adds `fast_model/` to a release that has `sid_index/`).
        """
        self.out_dir = Path(out_dir)
        if (
            self.out_dir.exists()
            and not overwrite
            and base is None
            and (not self.out_dir.is_dir() or any(self.out_dir.iterdir()))
        ):
            raise ReleaseError(
                f"{self.out_dir} already exists and is not empty (pass overwrite to replace it)"
            )
        self.version = version
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.staging = self.out_dir.parent / f".{self.out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()
        self._configs: dict[str, dict[str, object]] = {}
        self._metrics: dict[str, dict[str, object]] = {}
        self._done = False
        if base is not None:
            for rel in base.manifest.files:
                dst = self.staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:  # hard links make carrying a multi-GB part free; copy across devices
                    os.link(base.path / rel, dst)
                except OSError:
                    shutil.copy2(base.path / rel, dst)
            self._configs = {k: dict(v) for k, v in base.manifest.configs.items()}
            self._metrics = {k: dict(v) for k, v in base.manifest.metrics.items()}

    def part_dir(self, name: str, *, replace: bool = True) -> Path:
        """Create (emptying a carried-over copy when `replace`) and return `<staging>/<name>/`."""
        if not name or "/" in name or name.startswith("."):
            raise ReleaseError(f"invalid part name {name!r}")
        d = self.staging / name
        if replace and d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def set_config(self, component: str, config: Mapping[str, object]) -> None:
        self._configs[component] = json.loads(json.dumps(dict(config), default=str))

    def set_metrics(self, component: str, metrics: Mapping[str, object]) -> None:
        self._metrics[component] = json.loads(json.dumps(dict(metrics), default=str))

    def finalize(self) -> Manifest:
        """Hash every staged file, write the manifest and move the release into place."""
        if self._done:
            raise ReleaseError("release already finalized")
        files = {
            p.relative_to(self.staging).as_posix(): FileEntry(sha256_file(p), p.stat().st_size)
            for p in _walk_files(self.staging)
        }
        parts = sorted(p.name for p in self.staging.iterdir() if p.is_dir())
        now = datetime.now(UTC)
        manifest = Manifest(
            version=self.version or now.strftime("%Y%m%dT%H%M%SZ"),
            created_at=now.isoformat(timespec="seconds"),
            files=files,
            parts=parts,
            configs=self._configs,
            metrics=self._metrics,
        )
        tmp = self.staging / (MANIFEST_NAME + ".tmp")
        tmp.write_text(manifest.to_json(), encoding="utf-8")
        os.replace(tmp, self.staging / MANIFEST_NAME)
        # Swap into place: the old release (if any) is moved aside first, then removed.
        old = None
        if self.out_dir.exists():
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out_dir, old)
        os.replace(self.staging, self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._done = True
        return manifest

    def abort(self) -> None:
        """Discard the staging directory (idempotent)."""
        if not self._done:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._done = True

    def __enter__(self) -> ReleaseWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self._done:
            self.finalize()
        else:
            self.abort()
