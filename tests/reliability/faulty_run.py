"""``run.py`` with a fault point: the first call of the named function (with an argument equal to
WHEN, if given) touches READY_FILE and blocks there, so the test can SIGKILL the run exactly
there or, with a RELEASE_FILE, act (lock the registry, start a rival run) and then let it go on.

    python -m tests.reliability.faulty_run MODULE:QUALNAME READY_FILE WHEN|- RELEASE_FILE|- RUN.PY ARGS...
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from pathlib import Path


def pause_at(target: str, ready: Path, when: str | None, release: Path | None) -> None:
    module_name, qualname = target.split(":")
    *parents, attribute = qualname.split(".")
    owner = importlib.import_module(module_name)
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def paused(*args, **kwargs):
        if not ready.exists() and (when is None or when in map(str, (*args, *kwargs.values()))):
            ready.write_text(target)
            deadline = time.monotonic() + 3600
            while (release is None or not release.exists()) and time.monotonic() < deadline:
                time.sleep(0.05)
        return original(*args, **kwargs)

    setattr(owner, attribute, paused)


if __name__ == "__main__":
    target, ready, when, release, *argv = sys.argv[1:]
    pause_at(target, Path(ready), None if when == "-" else when, None if release == "-" else Path(release))
    import run

    sys.exit(run.main(argv))
