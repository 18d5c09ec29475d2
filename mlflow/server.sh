#!/usr/bin/env bash
# Start an MLflow tracking server for fer-automl.
#
#   mlflow/server.sh                                  # SQLite in ./mlflow-server/, artifacts beside it, 127.0.0.1:5000
#   eval "$(mlflow/postgres.sh)" && mlflow/server.sh  # PostgreSQL (a local cluster; see mlflow/postgres.sh)
#   BACKEND=postgresql+psycopg2://mlflow:PASS@db:5432/mlflow ARTIFACTS=s3://fer-mlflow/artifacts mlflow/server.sh
#   HOST=0.0.0.0 ALLOWED_HOSTS="mlflow.internal:5000" mlflow/server.sh   # beyond loopback: put TLS in front
#
# Environment:
#   BACKEND         backend store URI (default sqlite:///$DATA_DIR/mlflow.db). SQLite is fine behind this one
#                   server process; use PostgreSQL for a team server (pip install -e ".[team]" for the driver;
#                   write postgresql+psycopg2://..., as SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3).
#                   A database backend (postgresql, mysql, mssql) is created or upgraded with MLflow's own
#                   migrations (`mlflow db upgrade BACKEND`) before the server starts.
#   ARTIFACTS       artifact store, served by this server (--serve-artifacts; clients need no storage
#                   credentials). Default $DATA_DIR/artifacts; s3://BUCKET/PATH for S3 or an S3-compatible store
#                   such as MinIO (needs boto3 on the server and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and,
#                   for MinIO, MLFLOW_S3_ENDPOINT_URL=http://minio:9000 in this script's environment).
#   HOST, PORT      bind address (default 127.0.0.1:5000: nothing but this machine can reach it).
#   WORKERS         server worker processes (MLflow's default: 4; the tests use 1 to start fast on 2 cores).
#   ALLOWED_HOSTS   MLflow's DNS-rebinding protection (--allowed-hosts; always on here): Host headers accepted;
#                   default MLflow's (localhost, 127.0.0.1, private IPs). Name the server's own name:port
#                   when HOST is not loopback.
#   CORS_ORIGINS    --cors-allowed-origins (default: MLflow's, localhost:*).
#   AUTH=1          MLflow basic auth (--app-name basic-auth; pip install -e ".[team]" for mlflow[auth]).
#                   The first start needs MLFLOW_AUTH_ADMIN_PASSWORD (admin user MLFLOW_AUTH_ADMIN_USERNAME,
#                   default admin; MLflow has no default password). Users and permissions live in AUTH_DB
#                   (default sqlite:///$DATA_DIR/basic_auth.db; mlflow/postgres.sh exports a PostgreSQL one);
#                   AUTH_DEFAULT_PERMISSION (default READ) is what a user may do without a grant. This script
#                   writes $DATA_DIR/basic_auth.ini (mode 600) unless MLFLOW_AUTH_CONFIG_PATH names one, and
#                   keeps MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF) in $DATA_DIR/flask_secret_key if unset.
#   DATA_DIR        where the default SQLite file, artifacts and auth files live (default ./mlflow-server).
set -euo pipefail
me=$(basename "$0")
die() { echo "$me: error: $*" >&2; exit 1; }
DATA_DIR=${DATA_DIR:-$PWD/mlflow-server}
BACKEND=${BACKEND:-sqlite:///$DATA_DIR/mlflow.db}
ARTIFACTS=${ARTIFACTS:-$DATA_DIR/artifacts}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-5000}
mkdir -p "$DATA_DIR"
case "$ARTIFACTS" in *://*) ;; *) mkdir -p "$ARTIFACTS" ;; esac
case "$BACKEND" in
  postgresql*|mysql*|mssql*)
    # the schema comes from MLflow's own migrations, never from hand-written SQL
    echo "$me: mlflow db upgrade ${BACKEND%%://*}://...@${BACKEND##*@}" >&2
    mlflow db upgrade "$BACKEND" >&2 || die "mlflow db upgrade failed for BACKEND=${BACKEND%%://*}://...@${BACKEND##*@}" ;;
esac
args=(server --backend-store-uri "$BACKEND" --serve-artifacts --artifacts-destination "$ARTIFACTS"
      --host "$HOST" --port "$PORT")
[ -n "${WORKERS:-}" ] && args+=(--workers "$WORKERS")
[ -n "${ALLOWED_HOSTS:-}" ] && args+=(--allowed-hosts "$ALLOWED_HOSTS")
[ -n "${CORS_ORIGINS:-}" ] && args+=(--cors-allowed-origins "$CORS_ORIGINS")
if [ "${AUTH:-0}" = 1 ]; then
  umask 077
  if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
    perm=${AUTH_DEFAULT_PERMISSION:-READ}
    case "$perm" in READ|USE|EDIT|MANAGE|DENY|NO_PERMISSIONS) ;;
      *) die "AUTH_DEFAULT_PERMISSION='$perm': one of READ, USE, EDIT, MANAGE, NO_PERMISSIONS" ;; esac
    cat >"$DATA_DIR/basic_auth.ini" <<EOF
# written by mlflow/server.sh (AUTH=1); MLflow reads it through MLFLOW_AUTH_CONFIG_PATH
[mlflow]
default_permission = $perm
database_uri = ${AUTH_DB:-sqlite:///$DATA_DIR/basic_auth.db}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
    export MLFLOW_AUTH_CONFIG_PATH=$DATA_DIR/basic_auth.ini
  fi
  if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    [ -s "$DATA_DIR/flask_secret_key" ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$DATA_DIR/flask_secret_key"
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$DATA_DIR/flask_secret_key")
    export MLFLOW_FLASK_SERVER_SECRET_KEY
  fi
  args+=(--app-name basic-auth)
fi
echo "mlflow ${args[*]}" | sed 's#://[^@ ]*@#://...@#g' >&2
echo "tracking URI for fer-automl: http://$HOST:$PORT  (fer-automl search ... --tracking-uri http://$HOST:$PORT)" >&2
exec mlflow "${args[@]}"
