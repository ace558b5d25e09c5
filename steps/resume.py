"""Where a training step keeps its resume state: ``<artifact store>/resume/<step>-<cache key>``.

The step's cache key covers its inputs, parameters and code, so only a re-run with identical
inputs resumes a state, and a retried pod on a cluster finds the state its predecessor saved.
On a remote artifact store (s3://, gs://, ...) the state is written to a local scratch folder and
copied up after every save (the state file first, then ``state.json``), and copied down on start.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from zenml import get_step_context
from zenml.client import Client
from zenml.io import fileio

from cxr.train.resume import MANIFEST, ResumeStore


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


class MirroredResumeStore(ResumeStore):
    """A ResumeStore in a local folder, mirrored to ``remote`` (any path ZenML's fileio reaches)."""

    def __init__(self, remote: str, fingerprint: str):
        super().__init__(Path(tempfile.mkdtemp(prefix="cxr-resume-")), fingerprint)
        self.remote = remote.rstrip("/")

    def local_files(self) -> list[str]:
        """Files under the local folder, relative, state files before each ``state.json``."""
        files = [str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file()]
        return sorted(files, key=lambda name: (Path(name).parent, Path(name).name == MANIFEST))

    def push(self) -> None:
        """Copy the local state up, manifests last, then drop remote files the local folder no longer has."""
        files = self.local_files()
        for name in files:
            fileio.makedirs(str(Path(self.remote, name).parent))
            fileio.copy(str(self.folder / name), f"{self.remote}/{name}", overwrite=True)
        for folder, _, names in fileio.walk(self.remote) if fileio.exists(self.remote) else []:
            for name in names:
                relative = str(Path(str(folder), str(name)).relative_to(self.remote))
                if relative not in files:
                    fileio.remove(f"{self.remote}/{relative}")

    def pull(self) -> None:
        """Copy the remote state down into the local folder."""
        for folder, _, names in fileio.walk(self.remote) if fileio.exists(self.remote) else []:
            for name in names:
                relative = Path(str(folder), str(name)).relative_to(self.remote)
                (self.folder / relative).parent.mkdir(parents=True, exist_ok=True)
                fileio.copy(f"{self.remote}/{relative}", str(self.folder / relative), overwrite=True)

    def save(self, state: dict) -> None:
        super().save(state)
        self.push()

    def load(self) -> dict | None:
        self.pull()
        return super().load()

    def clear(self) -> None:
        super().clear()
        if fileio.exists(self.remote):
            fileio.rmtree(self.remote)


def resume_store(step: str) -> ResumeStore:
    """The running step's resume store, keyed by its cache key."""
    key = get_step_context().step_run.cache_key
    root = str(Client().active_stack.artifact_store.path).rstrip("/")
    folder = f"{root}/resume/{step}-{key}"
    if is_local(root):
        return ResumeStore(folder.removeprefix("file://"), key)
    return MirroredResumeStore(folder, key)
