"""``run.py`` with a fault point: the named function, when called (with an argument equal to
WHEN, if given), touches READY_FILE and blocks, so the test can SIGKILL the run exactly there.

    python -m tests.reliability.faulty_run MODULE:QUALNAME READY_FILE WHEN|- RUN.PY ARGS...
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from pathlib import Path


def pause_at(target: str, ready: Path, when: str | None) -> None:
    module_name, qualname = target.split(":")
    *parents, attribute = qualname.split(".")
    owner = importlib.import_module(module_name)
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def paused(*args, **kwargs):
        if when is None or when in map(str, (*args, *kwargs.values())):
            ready.write_text(target)
            time.sleep(3600)
        return original(*args, **kwargs)

    setattr(owner, attribute, paused)


if __name__ == "__main__":
    target, ready, when, *argv = sys.argv[1:]
    pause_at(target, Path(ready), None if when == "-" else when)
    import run

    sys.exit(run.main(argv))
