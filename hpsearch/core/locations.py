"""Where the embedded default keeps things, relative to the folder a command runs in.

One place for these paths, so that the storage, the start-up probe, exports and reports agree.
"""

from __future__ import annotations

from pathlib import Path

STUDIES_DIR = Path("studies")
DEFAULT_STORAGE = str(STUDIES_DIR / "journal.log")  # the Optuna journal file that `run` uses without --storage
LAST_RUN_FILE = STUDIES_DIR / ".last_run.json"
UNDELIVERED_DIR = STUDIES_DIR / "undelivered"  # tracking writes a down MLflow server never took
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"  # MLflow 3 refuses a bare ./mlruns file store
