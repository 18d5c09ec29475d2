#!/usr/bin/env bash
# A PostgreSQL cluster for the MLflow team server, from Debian's `postgresql` package, where Docker
# is absent (on a Docker host use mlflow/docker-compose.yml instead).
#
#   eval "$(mlflow/postgres.sh)"     # init (first time) + start + role and databases; exports BACKEND, AUTH_DB
#   mlflow/server.sh                 # then: the MLflow server on that database (mlflow db upgrade first)
#   mlflow/postgres.sh stop          # stop this cluster (pg_ctl stop; nothing else)
#
# The cluster listens on 127.0.0.1:$PG_PORT only; its unix socket lives in the data folder (not
# /var/run/postgresql), where only the cluster's owner can reach it. TCP logins need a password
# (scram-sha-256). Stdout carries only the `export ...` lines (also saved, mode 600, in
# $DATA_DIR/postgres.env): BACKEND and AUTH_DB (postgresql+psycopg2://mlflow@127.0.0.1:PORT/DB, no password
# in them) and PGPASSFILE ($DATA_DIR/pgpass, mode 600, where libpq finds the password); the rest: stderr.
#
# Environment:
#   DATA_DIR     the MLflow server's folder (default ./mlflow-server, as mlflow/server.sh)
#   PG_DATA      the cluster's data folder (default $DATA_DIR/postgres)
#   PG_PORT      TCP port on 127.0.0.1 (default 5432)
#   PG_USER      login role for MLflow (default mlflow); PG_PASSWORD its password (default: random,
#                made once and kept in $DATA_DIR/postgres.env)
#   PG_DB        MLflow's database (default mlflow); PG_AUTH_DB the basic-auth users' database
#                (default mlflow_auth)
#   PG_BIN       folder of initdb/pg_ctl/postgres (default: initdb on PATH, else the newest
#                /usr/lib/postgresql/<version>/bin)
#   RUN_AS       when run as root: the unprivileged user that owns and runs the cluster (initdb
#                refuses root; default postgres if that user exists, else nobody). It must be able
#                to reach PG_DATA (every folder above it needs o+x).
set -euo pipefail
me=$(basename "$0")
die() { echo "$me: error: $*" >&2; exit 1; }

DATA_DIR=${DATA_DIR:-$PWD/mlflow-server}
PG_DATA=${PG_DATA:-$DATA_DIR/postgres}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-mlflow}
PG_DB=${PG_DB:-mlflow}
PG_AUTH_DB=${PG_AUTH_DB:-mlflow_auth}
ENV_FILE=$DATA_DIR/postgres.env

case "$PG_DATA" in /*) ;; *) PG_DATA=$PWD/$PG_DATA ;; esac
case "$PG_DATA" in *[\'\ ]*) die "PG_DATA='$PG_DATA': no quotes or spaces, please" ;; esac
[ ${#PG_DATA} -le 90 ] || die "PG_DATA='$PG_DATA' is too long for a unix socket path (${#PG_DATA} > 90 characters)"
case "$PG_PORT" in ''|*[!0-9]*) die "PG_PORT='$PG_PORT' is not a port number" ;; esac
for pair in "PG_USER=$PG_USER" "PG_DB=$PG_DB" "PG_AUTH_DB=$PG_AUTH_DB"; do
  case "${pair#*=}" in ''|*[!a-z0-9_]*) die "${pair%%=*}='${pair#*=}': use lower-case letters, digits and _ only" ;; esac
done

if [ -z "${PG_BIN:-}" ]; then
  if command -v initdb >/dev/null 2>&1; then
    PG_BIN=$(dirname "$(readlink -f "$(command -v initdb)")")  # a link on PATH: its real folder
  else
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  fi
fi
for tool in initdb pg_ctl postgres psql createuser createdb; do
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/$tool" ] ||
  die "no PostgreSQL '$tool' in PG_BIN='${PG_BIN:-}' (found from initdb on PATH or /usr/lib/postgresql/*/bin): apt-get install postgresql (Debian/Ubuntu), or use mlflow/docker-compose.yml on a Docker host"
done

# every cluster command runs as the cluster's owner: ourselves, or RUN_AS when we are root
if [ "$(id -u)" = 0 ]; then
  if [ -z "${RUN_AS:-}" ]; then
    if id postgres >/dev/null 2>&1; then RUN_AS=postgres; else RUN_AS=nobody; fi
  fi
  id "$RUN_AS" >/dev/null 2>&1 || die "RUN_AS='$RUN_AS': no such user"
  [ "$(id -u "$RUN_AS")" != 0 ] || die "RUN_AS='$RUN_AS' is root: PostgreSQL refuses to run as root"
  as_owner() { runuser -u "$RUN_AS" -- "$@"; }
else
  as_owner() { "$@"; }
fi
pg() { local cmd=$1; shift; as_owner env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD "$PG_BIN/$cmd" "$@"; }

if [ "${1:-start}" = stop ]; then
  [ -f "$PG_DATA/postmaster.pid" ] || { echo "$me: no cluster running in $PG_DATA" >&2; exit 0; }
  pg pg_ctl stop -D "$PG_DATA" -m fast -w >&2
  exit 0
fi
[ "${1:-start}" = start ] || die "unknown command '$1' (start or stop)"

mkdir -p "$DATA_DIR"
if [ ! -d "$PG_DATA" ]; then
  mkdir -p "$PG_DATA"
  [ "$(id -u)" = 0 ] && chown "$RUN_AS": "$PG_DATA"
fi
chmod 700 "$PG_DATA"
if [ "$(id -u)" = 0 ]; then
  as_owner test -w "$PG_DATA" ||
    die "user '$RUN_AS' (RUN_AS) cannot reach or write PG_DATA='$PG_DATA': put it under a folder every parent of which it may traverse (e.g. /var/tmp/fer-pg), or chown it"
fi

# the role's password: PG_PASSWORD, else the one made on the first start
if [ -z "${PG_PASSWORD:-}" ] && [ -f "$ENV_FILE" ]; then
  PG_PASSWORD=$(sed -n "s/^export PG_PASSWORD='\(.*\)'$/\1/p" "$ENV_FILE")
fi
PG_PASSWORD=${PG_PASSWORD:-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}
case "$PG_PASSWORD" in *[!A-Za-z0-9._~-]*) die "PG_PASSWORD: use letters, digits and . _ ~ - only (it goes into a URI)" ;; esac

if [ ! -f "$PG_DATA/PG_VERSION" ]; then
  t0=$EPOCHREALTIME
  # local (socket) logins: only the cluster's owner can open the socket in PG_DATA; TCP: passwords
  pg initdb -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >&2 ||
    die "initdb failed for PG_DATA='$PG_DATA'"
  cat >>"$PG_DATA/postgresql.conf" <<EOF
# fer-automl (mlflow/postgres.sh): loopback only, socket in the data folder
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DATA'
EOF
  echo "$me: cluster created in $PG_DATA in $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t0}") s" >&2
fi

if ! pg pg_ctl status -D "$PG_DATA" >/dev/null 2>&1; then
  pg pg_ctl start -D "$PG_DATA" -w -t 120 -l "$PG_DATA/server.log" -o "-p $PG_PORT" >&2 ||
    die "PostgreSQL did not start on 127.0.0.1:$PG_PORT; see $PG_DATA/server.log: $(tail -n 3 "$PG_DATA/server.log" 2>/dev/null | tr '\n' ' ')"
else
  PG_PORT=$(sed -n 4p "$PG_DATA/postmaster.pid")
  echo "$me: cluster in $PG_DATA already running (port $PG_PORT)" >&2
fi

psql_su() { pg psql -X -q -v ON_ERROR_STOP=1 -h "$PG_DATA" -p "$PG_PORT" -U postgres "$@"; }
exists() { [ "$(psql_su -d postgres -tA -c "$1")" = 1 ]; }
if ! exists "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'"; then
  pg createuser -h "$PG_DATA" -p "$PG_PORT" -U postgres "$PG_USER"
fi
# the password goes through a psql variable, never into a command line
echo "ALTER ROLE \"$PG_USER\" WITH LOGIN PASSWORD :'pw';" | psql_su -d postgres -v pw="$PG_PASSWORD" >&2
for db in "$PG_DB" "$PG_AUTH_DB"; do
  exists "SELECT 1 FROM pg_database WHERE datname = '$db'" ||
    pg createdb -h "$PG_DATA" -p "$PG_PORT" -U postgres -O "$PG_USER" "$db"
done

# The URIs carry no password (it would show in `ps` on the server's command line): libpq reads it
# from PGPASSFILE. +psycopg2: SQLAlchemy 2.1 takes a bare postgresql:// for psycopg 3.
BACKEND="postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
AUTH_DB="postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_AUTH_DB"
umask 077
printf '127.0.0.1:%s:*:%s:%s\n' "$PG_PORT" "$PG_USER" "$PG_PASSWORD" >"$DATA_DIR/pgpass"
cat >"$ENV_FILE" <<EOF
export PG_DATA='$PG_DATA'
export PG_PORT='$PG_PORT'
export PG_PASSWORD='$PG_PASSWORD'
export PGPASSFILE='$DATA_DIR/pgpass'
export BACKEND='$BACKEND'
export AUTH_DB='$AUTH_DB'
EOF
echo "$me: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT, postmaster pid $(head -n 1 "$PG_DATA/postmaster.pid"); URIs in $ENV_FILE" >&2
cat "$ENV_FILE"
