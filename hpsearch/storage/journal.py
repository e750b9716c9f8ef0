"""Journal files that a killed process tore: a torn last record is set aside (kept beside the file), so that
Optuna replays the whole records and no finished trial is lost.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from optuna.storages.journal import JournalFileOpenLock


class _MendingJournalLock(JournalFileOpenLock):
    """Optuna's journal lock that, once held, sets aside a torn tail (see set_aside_torn_tail).

    The open(O_EXCL) lock works on every filesystem, NFS included, unlike symlinks on some mounts.
    Optuna holds it for every append, so a tail torn by another process (killed, disk full) while
    this one runs on is cut before our next record would be glued onto it, not only on open.
    """

    def __init__(self, path: Path, shown: str):
        super().__init__(str(path))
        self.path = path
        self.shown = shown

    def acquire(self) -> bool:
        held = super().acquire()
        try:
            moved = set_aside_torn_tail(self.path)
        except BaseException:
            self.release()
            raise
        if moved:
            print(f"warning: {self.shown} ended in a torn record ({moved} bytes without their newline: a crash "
                  f"or full disk mid-write); moved them to {self.shown}{TORN_SUFFIX}", file=sys.stderr)
        return held


TORN_SUFFIX = ".torn"
_TAIL_CHUNK = 1 << 16


def set_aside_torn_tail(path: Path) -> int:
    """Move a last line that lacks its newline to `<journal>.torn`; returns how many bytes moved (0: none).

    A crash or a full disk in the middle of an append leaves such a tail. Optuna skips it, but the
    next append is glued onto it and that merged line fails to parse from then on, so every later
    open of the study fails. Call with the journal's lock held. Each tear is appended to the .torn
    file as one line, which is never truncated: the bytes are kept for whoever investigates.
    A tail that is a whole record (the write was cut just before its newline) is kept instead: its
    newline is added, and the trial it finished stays finished.
    """
    try:
        journal = open(path, "r+b")  # noqa: SIM115 -- entered just below: a missing journal returns before `with`
    except FileNotFoundError:
        return 0
    with journal:
        size = journal.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        journal.seek(size - 1)
        if journal.read(1) == b"\n":
            return 0
        start = size  # find where the torn line begins: just after the last newline, reading backwards
        while start > 0:
            chunk_start = max(0, start - _TAIL_CHUNK)
            journal.seek(chunk_start)
            newline = journal.read(start - chunk_start).rfind(b"\n")
            if newline >= 0:
                start = chunk_start + newline + 1
                break
            start = chunk_start
        journal.seek(start)
        torn = journal.read()
        if _whole_record(torn):
            journal.write(b"\n")  # the read left the file position at its end
            journal.flush()
            os.fsync(journal.fileno())
            return 0
        # Keep the bytes durably before cutting them: a crash in between leaves a copy, never a loss.
        with open(path.with_name(path.name + TORN_SUFFIX), "ab") as kept:
            kept.write(torn + b"\n")
            kept.flush()
            os.fsync(kept.fileno())
        journal.truncate(start)
        journal.flush()
        os.fsync(journal.fileno())
    return len(torn)


def _whole_record(line: bytes) -> bool:
    # Optuna writes each record as one JSON object: no proper prefix of one parses as an object.
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # UnicodeDecodeError included
        return False


def journal_damage(path: Path, shown: str, exc: Exception) -> str:
    """One line naming the journal and its first line that is not a JSON record (or, failing that, the error)."""
    try:
        with open(path, "rb") as journal:
            for number, line in enumerate(journal, start=1):
                try:
                    json.loads(line)
                except ValueError as bad:
                    return (f"{shown} line {number} is not a valid journal record ({bad}); the study cannot be "
                            "read until that line is repaired or removed")
    except OSError as unreadable:
        return f"{shown} cannot be read: {unreadable}"
    return f"{shown} cannot be replayed: {type(exc).__name__}: {exc}"
