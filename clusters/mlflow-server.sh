#!/usr/bin/env bash
# An MLflow tracking server for cluster sweeps: a database for runs, a folder (or bucket) for artefacts,
# artefacts proxied through the server so workers need no direct storage access.
set -euo pipefail
STORE="${MLFLOW_STORE:-sqlite:////srv/mlflow/mlflow.db}"      # or postgresql://user:pass@host/db
ARTIFACTS="${MLFLOW_ARTIFACTS:-/srv/mlflow/artifacts}"        # or s3://bucket/path
mkdir -p /srv/mlflow
exec mlflow server --host 0.0.0.0 --port "${PORT:-5000}" \
    --backend-store-uri "$STORE" --artifacts-destination "$ARTIFACTS" --serve-artifacts
