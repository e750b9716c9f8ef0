#!/bin/bash
# The one MLflow server every array task logs to, backed by the same PostgreSQL server as the study
# (its own database), with artifacts (the checkpoints) on storage every node and the server can reach.
#
#   export MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db-host:5432/mlflow   # password: ~/.pgpass or PGPASSWORD
#   export MLFLOW_ARTIFACTS_DESTINATION=/shared/hpsearch/mlartifacts
#   bash examples/slurm/mlflow-server.sh        # on a service node; port 5000
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?export MLFLOW_BACKEND_STORE_URI=postgresql://user@db-host/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?export MLFLOW_ARTIFACTS_DESTINATION=/shared/path/for/artifacts}"

exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}"
