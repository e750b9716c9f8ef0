"""The last run's study, storage and tracking store, remembered per folder so that `status`, `best` and `report`
find them without options.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hpsearch.core.locations import LAST_RUN_FILE, STUDIES_DIR

# ---- the study most recently run from this folder ----


@dataclass
class LastRun:
    study_name: str
    storage: str | None
    tracking_uri: str
    space_file: str | None


def remember_last_run(last: LastRun) -> None:
    STUDIES_DIR.mkdir(exist_ok=True)
    # A name of its own in the same folder, then an atomic rename: two runs finishing together each
    # replace the whole file, so a reader sees one of them complete, never a torn or mixed file.
    fd, tmp = tempfile.mkstemp(dir=STUDIES_DIR, prefix=".last_run.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(last.__dict__ | {"time": time.time()}, indent=2))
        os.replace(tmp, LAST_RUN_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def last_run() -> LastRun | None:
    """The study last run from this folder; None when no file says so or it does not read as one.

    A broken file counts as absent, never as an error: it is only a pointer that the next run rewrites,
    and it must not stop `--study NAME` or `ui`, which merely consult it.
    """
    try:
        data = json.loads(LAST_RUN_FILE.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    name, storage, uri, space = (data.get(k) for k in ("study_name", "storage", "tracking_uri", "space_file"))
    if not (isinstance(name, str) and isinstance(uri, str)) or not all(v is None or isinstance(v, str)
                                                                        for v in (storage, space)):
        return None
    return LastRun(name, storage, uri, space)
