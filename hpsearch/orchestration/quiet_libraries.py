"""Library chatter kept down, in the parent and in every worker process."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Optuna's and MLflow's INFO chatter (study created, tables created) would bury hpsearch's own lines."""
    import logging
    import os

    # MLflow sets its logger's level when imported, from this variable; spawned workers inherit it.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Offline machines are the norm for tests and clusters: never phone home.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import optuna.logging

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
