"""A trial's scratch folder, and the removal of those that killed trials leave behind.

A trial writes its checkpoints into a scratch folder (`$TMPDIR/fer-trial-*`) before `tune.report`
copies them into the search's storage. A trial that ends, however it ends, removes its folder; one
killed with its driver (SIGKILL, a lost node, the machine's OOM killer) cannot, and its folder (a
model-plus-optimizer state and the best weights: ~180 MB for a ResNet-18 trained with AdamW) stays.

Each folder therefore holds `owner.json`: the search's storage folder, the host, and the pid and
start time of the process that made it. `remove_dead_scratch(search_dir)` removes the folders of
that search on this host whose process is gone (a pid that now belongs to a younger process counts
as gone); it never touches another search's folder, a folder whose owner is alive, or a folder
without a readable owner file (made by something else, or before owners were recorded).
`fer-automl search --resume` calls it on the driver, and every trial of a search calls it on the
node it starts on (where a killed trial of a cluster left its folder).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

PREFIX = "fer-trial-"
OWNER_FILE = "owner.json"


def _start_ticks(pid: int) -> Optional[str]:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22), None where
    there is no /proc (then only the pid is compared)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: Optional[str]) -> bool:
    if Path("/proc").is_dir() and started is not None:
        return _start_ticks(pid) == started  # gone, or the pid reused by a younger process: not the owner
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def trial_scratch(search_dir: str, tmp: Optional[str] = None) -> Iterator[Path]:
    """A scratch folder for one trial of the search stored at `search_dir`, removed on exit."""
    with tempfile.TemporaryDirectory(prefix=PREFIX, dir=tmp) as d:
        pid = os.getpid()
        (Path(d) / OWNER_FILE).write_text(json.dumps({"search": str(search_dir), "host": socket.gethostname(),
                                                      "pid": pid, "started": _start_ticks(pid)}))
        yield Path(d)


def remove_dead_scratch(search_dir: str, tmp: Optional[str] = None) -> List[Path]:
    """Remove the scratch folders that dead trials of the search at `search_dir` left on this host;
    returns the folders removed."""
    removed = []
    host = socket.gethostname()
    for d in sorted(Path(tmp or tempfile.gettempdir()).glob(PREFIX + "*")):
        try:
            owner = json.loads((d / OWNER_FILE).read_text())
            ours = owner["search"] == str(search_dir) and owner["host"] == host
            pid, started = int(owner["pid"]), owner.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a folder this module made: leave it
        if ours and not _alive(pid, started):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
