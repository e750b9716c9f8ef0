"""Best trial → files: best.yaml (a complete space file with the winning values fixed), model.pt, trial.json."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
import yaml

from hpsearch import records, tracking
from hpsearch.errors import UsageError
from hpsearch.spec import Spec, fixed_spec, parse_spec


def default_export_dir(study_name: str) -> Path:
    return Path("studies") / study_name / "best"


def spec_of_study(study: optuna.Study) -> Spec:
    data = study.user_attrs.get(records.STUDY_SPEC)
    if not data:
        raise UsageError(f"study {study.study_name!r} was not made by hpsearch (it records no space file)")
    return parse_spec(data, study.user_attrs.get(records.STUDY_SPACE_FILE))


def export_best(study: optuna.Study, record: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the winner's files into out_dir; returns what was written."""
    spec = spec_of_study(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    winner = fixed_spec(spec, record["params"])
    best_yaml = out_dir / "best.yaml"
    header = (
        f"# Exported by hpsearch from study {record['study_name']!r}, trial {record['trial_number']} "
        f"({record['metric']}={record['value']:.6g}).\n"
        f"# Retrain with: hpsearch train {best_yaml}\n"
    )
    best_yaml.write_text(header + yaml.safe_dump(winner.to_dict(), sort_keys=False))
    written["best.yaml"] = best_yaml

    if record.get("checkpoint") and record.get("mlflow_run_id"):
        with tempfile.TemporaryDirectory() as tmp:
            local = tracking.download_checkpoint(record["tracking_uri"], record["mlflow_run_id"], tmp)
            shutil.copyfile(local, out_dir / "model.pt")
        written["model.pt"] = out_dir / "model.pt"

    trial_json = out_dir / "trial.json"
    trial_json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    written["trial.json"] = trial_json
    return written
