"""Resume state of an interrupted training loop: everything it needs to go on as if it had never
stopped (weights, optimizer, schedule, averaging, AMP scaler, epoch order position, RNG states,
best-so-far weights and history), saved atomically with a checksum.

A ``ResumeStore`` is a folder holding ``state.json`` (what the state is for, its file, its SHA-256)
and one state file. A save writes the new file, then replaces ``state.json`` in one rename, then
removes the old file, so a kill at any moment leaves either the old state or the new one. A state
whose checksum, fingerprint or format does not match is discarded with a warning, never loaded.
The state is a ``torch.save`` of tensors and plain data, read back with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST = "state.json"
FORMAT = 1


class ResumeStateWarning(UserWarning):
    """A resume state was found but not used (corrupt, stale or unreadable)."""


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch (and CUDA when present), as loadable plain data."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                    has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(row: dict) -> dict:
    """A history row with numpy scalars as python ones, so a resume state loads with weights_only."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class ResumeStore:
    """The resume state of one training run in ``folder``, valid only for the same ``fingerprint``
    (a digest of everything that determines the run: data, configs, code)."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` as the current one, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"state-{digest[:16]}.pt"
        _fsync_write(self.folder / name, data)
        previous = self._manifest()
        manifest = {"format": FORMAT, "fingerprint": self.fingerprint, "file": name, "sha256": digest,
                    "epoch": state.get("epoch"), "position": (state.get("partial") or {}).get("position", 0)}
        _fsync_write(self.folder / f"{MANIFEST}.tmp", json.dumps(manifest).encode())
        os.replace(self.folder / f"{MANIFEST}.tmp", self.folder / MANIFEST)
        if previous and previous.get("file") not in (None, name):
            (self.folder / previous["file"]).unlink(missing_ok=True)

    def _manifest(self) -> dict | None:
        path = self.folder / MANIFEST
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return {}

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none; a state that fails its checks is removed
        with a ResumeStateWarning saying why."""
        manifest = self._manifest()
        if manifest is None:
            return None
        problem = self._problem(manifest)
        if problem is None:
            try:
                return torch.load(io.BytesIO((self.folder / manifest["file"]).read_bytes()), weights_only=True)
            except Exception as error:  # any unreadable state is discarded below, never used
                problem = f"it cannot be read ({type(error).__name__}: {error})"
        warnings.warn(f"resume state in {self.folder} discarded: {problem}; training starts from the beginning",
                      ResumeStateWarning, stacklevel=2)
        self.clear()
        return None

    def _problem(self, manifest: dict) -> str | None:
        """Why the state described by ``manifest`` must not be loaded, or None."""
        if manifest.get("format") != FORMAT or "file" not in manifest:
            return "its state.json is unreadable or of another format"
        if manifest.get("fingerprint") != self.fingerprint:
            return "it was saved for other inputs (stale)"
        path = self.folder / manifest["file"]
        if not path.is_file():
            return f"its file {manifest['file']} is missing"
        if hashlib.sha256(path.read_bytes()).hexdigest() != manifest.get("sha256"):
            return f"its file {manifest['file']} fails its checksum (corrupt)"
        return None

    def clear(self) -> None:
        """Remove the state (after the run completes, or when it cannot be used)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def pull(self) -> None:
        """Bring the state into ``folder`` where it is kept elsewhere (a no-op here)."""

    def push(self) -> None:
        """Send what is in ``folder`` where the state is kept (a no-op here)."""

    def rank(self, index: int) -> "ResumeStore":
        """The store of one data-parallel process: a subfolder, same fingerprint."""
        return ResumeStore(self.folder / f"rank{index}", self.fingerprint)


class StopRequest:
    """SIGINT/SIGTERM while training with a resume store: remembered, so the loop saves its state
    after the current step and then stops as the signal asked (``stop``). A second signal stops at
    once. Handlers are installed only in the main thread, and restored on exit."""

    def __init__(self):
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame) -> None:
        if self.signal is not None:
            self.__exit__()
            self.signal = number
            self.stop()
        self.signal = number

    def stop(self) -> None:
        """Raise what the signal means: KeyboardInterrupt for SIGINT, SystemExit(128 + n) otherwise."""
        if self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + int(self.signal))

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
