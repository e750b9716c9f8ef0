"""Best trial → files: best.yaml (a complete space file with the winning values fixed), model.pt, trial.json."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
import yaml

from hpsearch.core import record_keys
from hpsearch.core.errors import UsageError
from hpsearch.results.winner_weights import checkpoint_file, has_checkpoint
from hpsearch.spec.redaction import masked_spec
from hpsearch.spec.spec_types import Spec
from hpsearch.spec.study_spec import fixed_spec, parse_spec
from hpsearch.storage.stores import study_dir


def default_export_dir(study_name: str) -> Path:
    return study_dir(study_name, "best")


def spec_of_study(study: optuna.Study) -> Spec:
    data = study.user_attrs.get(record_keys.STUDY_SPEC)
    if not data:
        raise UsageError(f"study {study.study_name!r} was not made by hpsearch (it records no space file)")
    return parse_spec(data, study.user_attrs.get(record_keys.STUDY_SPACE_FILE))


EXPORT_FILES = ("best.yaml", "model.pt", "trial.json")


def check_export_dir(out_dir: Path, force: bool) -> None:
    """Refuse to export over something: a file, or a folder that is not empty (unless --force)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--export: {out_dir} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"--export: {out_dir} is not empty; pass --force to replace its files")


def export_best(study: optuna.Study, record: dict[str, Any], out_dir: Path, tracking_uri: str,
                force: bool = False) -> dict[str, Path]:
    """Write the winner's files into out_dir; returns what was written.

    The files are written into a temporary folder beside out_dir and moved into place only when all
    of them are there, so an export that fails half-way leaves nothing, and a model.pt is never
    left beside a best.yaml it does not belong to.
    """
    check_export_dir(out_dir, force)
    spec = spec_of_study(study)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would become the export's own: a folder as mkdir makes it
    try:
        _write_files(spec, record, tmp, tracking_uri)
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: out_dir / name for name in EXPORT_FILES if (out_dir / name).exists()}


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def _write_files(spec: Spec, record: dict[str, Any], where: Path, tracking_uri: str) -> None:
    # The export must reproduce the winner without the study: no storage URL, no password.
    winner = masked_spec(fixed_spec(spec, record["params"]))
    winner = dataclasses.replace(winner, study=dataclasses.replace(winner.study, storage=None))
    header = (
        f"# Exported by hpsearch from study {record['study_name']!r}, trial {record['trial_number']} "
        f"({record['metric']}={record['value']:.6g}).\n"
        f"# Retrain with: hpsearch train best.yaml\n"
    )
    (where / "best.yaml").write_text(header + yaml.safe_dump(winner.to_dict(), sort_keys=False))
    if has_checkpoint(record):  # else the export says why in trial.json's checkpoint_note
        with checkpoint_file(record, tracking_uri, "--export") as path:
            shutil.copyfile(path, where / "model.pt")
    (where / "trial.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        tmp.rename(out_dir)  # one atomic rename: the folder appears complete or not at all
        return
    # An existing folder (empty, or --force): the old export goes first, then the new files move in,
    # so an interruption leaves part of the new export, never a mix of old and new.
    for name in EXPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in EXPORT_FILES:
        if (tmp / name).exists():
            os.replace(tmp / name, out_dir / name)
