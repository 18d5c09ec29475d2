#!/usr/bin/env bash
# Start an MLflow tracking server for fer-automl.
#
#   mlflow/server.sh                                  # SQLite in ./mlflow-server/, artifacts beside it, 127.0.0.1:5000
#   BACKEND=postgresql://mlflow:PASS@db:5432/mlflow ARTIFACTS=s3://fer-mlflow/artifacts mlflow/server.sh
#   HOST=0.0.0.0 ALLOWED_HOSTS="mlflow.internal:5000" mlflow/server.sh   # beyond loopback: put TLS in front
#
# Environment:
#   BACKEND         backend store URI (default sqlite:///$DATA_DIR/mlflow.db). SQLite is fine behind this one
#                   server process; use PostgreSQL for a team server.
#   ARTIFACTS       artifact store for proxied access (default $DATA_DIR/artifacts; s3://... needs boto3 and
#                   AWS_* / MLFLOW_S3_ENDPOINT_URL for an S3-compatible store such as MinIO).
#   HOST, PORT      bind address (default 127.0.0.1:5000: nothing but this machine can reach it).
#   WORKERS         server worker processes (MLflow's default: 4; the tests use 1 to start fast on 2 cores).
#   ALLOWED_HOSTS   MLflow's DNS-rebinding protection (--allowed-hosts); default: MLflow's (localhost, private IPs).
#   CORS_ORIGINS    --cors-allowed-origins (default: MLflow's, localhost:*).
#   AUTH=1          MLflow basic auth (--app-name basic-auth; pip install "mlflow[auth]"; experimental in MLflow;
#                   set MLFLOW_FLASK_SERVER_SECRET_KEY and change the default admin password at once).
#   DATA_DIR        where the default SQLite file and artifacts live (default ./mlflow-server).
set -euo pipefail
DATA_DIR=${DATA_DIR:-$PWD/mlflow-server}
BACKEND=${BACKEND:-sqlite:///$DATA_DIR/mlflow.db}
ARTIFACTS=${ARTIFACTS:-$DATA_DIR/artifacts}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-5000}
mkdir -p "$DATA_DIR"
case "$ARTIFACTS" in *://*) ;; *) mkdir -p "$ARTIFACTS" ;; esac
args=(server --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" --host "$HOST" --port "$PORT")
[ -n "${WORKERS:-}" ] && args+=(--workers "$WORKERS")
[ -n "${ALLOWED_HOSTS:-}" ] && args+=(--allowed-hosts "$ALLOWED_HOSTS")
[ -n "${CORS_ORIGINS:-}" ] && args+=(--cors-allowed-origins "$CORS_ORIGINS")
[ "${AUTH:-0}" = 1 ] && args+=(--app-name basic-auth)
echo "mlflow ${args[*]}" >&2
echo "tracking URI for fer-automl: http://$HOST:$PORT  (fer-automl search ... --tracking-uri http://$HOST:$PORT)" >&2
exec mlflow "${args[@]}"
