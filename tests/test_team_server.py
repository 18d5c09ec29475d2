"""A team tracking server, for real: PostgreSQL from mlflow/postgres.sh (Debian's binaries, a cluster in a
temporary folder on 127.0.0.1), mlflow/server.sh on it with basic auth (AUTH=1), and a search, a promotion
and a prediction through http://127.0.0.1:PORT; a reader may read but not write; a foreign Host header is
refused. The commands are those of README "A team server (PostgreSQL, basic auth)"."""
from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, MlflowServer, free_port, run_cli, search_runs

# every test needs PostgreSQL + the MLflow server started (13-95 s on 2 cores, more when loaded)
pytestmark = pytest.mark.slow

SEARCH = "team-it"
MODEL = "fer-expression-team-it"
ADMIN = ("admin", "team-admin-pass-2026")
READER = ("reader", "team-reader-pass-2026")
SPACE = {
    # two fixed learning rates: two deterministic trials whose validation figures differ
    "dimensions": {"lr": {"type": "choice", "values": [0.02, 0.00001]}},
    "constants": {"model.backbone": "resnet10t", "train.epochs": 1, "train.batch_size": 32, "train.optimizer": "adamw",
                  "data.image_size": 32, "data.aug_strength": 0.0},
    "search": {"name": SEARCH, "dataset": {"format": "synthetic", "n": 140, "image_size": 32},
               "algorithm": "grid", "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent": 2,
               "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0},
}


def postgres_bin() -> str | None:
    """The folder of PostgreSQL's server binaries, found as mlflow/postgres.sh finds them."""
    found = shutil.which("initdb")
    if found:
        return str(Path(found).resolve().parent)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [int(x) for x in
                  Path(d).parent.name.split(".") if x.isdigit()])
    return next((d for d in reversed(dirs) if Path(d, "initdb").is_file()), None)


def creds(user: tuple[str, str]) -> dict:
    return {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}


@contextlib.contextmanager
def as_user(user: tuple[str, str]):
    """MLflow clients in this process authenticate as `user` (MLflow reads the two variables per request)."""
    saved = {k: os.environ.get(k) for k in creds(user)}
    os.environ.update(creds(user))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rest(uri: str, path: str, body: dict | None = None, user: tuple[str, str] | None = None,
         host: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of one request to the server's REST API."""
    req = urllib.request.Request(uri + path, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode())
    if host is not None:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class TeamServer:
    """PostgreSQL (mlflow/postgres.sh) + MLflow with basic auth (mlflow/server.sh), both on 127.0.0.1."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        # the cluster's folder: short (its unix socket lives there) and, when we are root, reachable by the
        # unprivileged user that runs PostgreSQL (pytest's own temporary folders are mode 700)
        self.pg_parent = Path(tempfile.mkdtemp(prefix="fer-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.pg_parent.chmod(0o755)
        self.pg_data = self.pg_parent / "pg"
        self.pg_env = {"DATA_DIR": str(data_dir), "PG_DATA": str(self.pg_data), "PG_PORT": str(free_port())}
        self.server = None
        t0 = time.monotonic()
        res = subprocess.run(["bash", str(REPO / "mlflow" / "postgres.sh")], capture_output=True, text=True,
                             timeout=300, env={**os.environ, **self.pg_env})
        self.postgres_s = time.monotonic() - t0
        self.postgres_log = res.stderr
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"mlflow/postgres.sh exited {res.returncode}: {res.stderr[-2000:]}")
        self.exports = dict(line[len("export "):].split("=", 1) for line in res.stdout.splitlines()
                            if line.startswith("export "))
        self.exports = {k: v.strip("'") for k, v in self.exports.items()}
        self.backend, self.auth_db = self.exports["BACKEND"], self.exports["AUTH_DB"]
        self.postmaster = int((self.pg_data / "postmaster.pid").read_text().split()[0])
        try:
            self.server = MlflowServer(data_dir, env={
                "BACKEND": self.backend, "AUTH_DB": self.auth_db, "PGPASSFILE": self.exports["PGPASSFILE"], "AUTH": "1",
                "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1]},
                log=data_dir / "server.log")
        except Exception:
            self.stop()
            raise
        self.uri = self.server.uri
        self.port = self.server.port

    def stop(self) -> None:
        """Stop exactly what this fixture started: the server's process group, then this cluster
        (`postgres.sh stop`, else its postmaster's group: pg_ctl makes it a group leader)."""
        if self.server is not None:
            self.server.stop()
        if (self.pg_data / "postmaster.pid").exists():
            subprocess.run(["bash", str(REPO / "mlflow" / "postgres.sh"), "stop"], capture_output=True, timeout=120,
                           env={**os.environ, **self.pg_env})
        pid = getattr(self, "postmaster", None)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(self.pg_parent, ignore_errors=True)


@pytest.fixture(scope="module")
def team(module_tmp):
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb on PATH or /usr/lib/postgresql/*/bin): "
                    "apt-get install postgresql, or run the compose file on a Docker host")
    server = TeamServer(module_tmp("team-server"))
    print(f"\nteam server: postgres.sh {server.postgres_s:.1f} s, server.sh to /health "
          f"{server.server.startup_s:.1f} s")
    yield server
    server.stop()


def pg_connect(team: TeamServer, uri: str):
    """psycopg2 on one of the cluster's URIs (the password from the PGPASSFILE postgres.sh wrote)."""
    import psycopg2

    return psycopg2.connect(uri.replace("postgresql+psycopg2://", "postgresql://", 1),
                            passfile=team.exports["PGPASSFILE"])


def test_schema_comes_from_mlflow_db_upgrade_on_postgresql(team):
    from alembic.script import ScriptDirectory

    import mlflow

    head = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations")).get_current_head()
    with contextlib.closing(pg_connect(team, team.backend)) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchall() == [(head,)]
        cur.execute("SELECT inet_server_addr()::text, current_setting('listen_addresses')")
        addr, listen = cur.fetchone()
    assert addr.split("/")[0] == "127.0.0.1" and listen == "127.0.0.1"
    # the unix socket is in the data folder, not /var/run/postgresql
    assert (team.pg_data / f".s.PGSQL.{team.pg_env['PG_PORT']}").is_socket()
    # the users of basic auth live in their own PostgreSQL database, created by MLflow's auth migrations
    with contextlib.closing(pg_connect(team, team.auth_db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT username, is_admin FROM users")
        assert (ADMIN[0], True) in cur.fetchall()
    log = (team.data_dir / "server.log").read_text()
    assert "mlflow db upgrade postgresql+psycopg2://...@127.0.0.1:" in log
    assert team.exports["PG_PASSWORD"] not in log  # the script never prints the password
    assert "--host 127.0.0.1" in log and "--serve-artifacts" in log and "--app-name basic-auth" in log


def test_loopback_allowed_hosts_and_basic_auth_on(team):
    path = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert rest(team.uri, path, user=ADMIN)[0] == 200
    status, body = rest(team.uri, path, user=ADMIN, host="evil.example.com")
    assert status == 403 and "Invalid Host header" in body
    assert rest(team.uri, path)[0] == 401
    assert rest(team.uri, path, user=(ADMIN[0], "wrong-password"))[0] == 401


@pytest.fixture(scope="module")
def searched(team, module_tmp):
    """A real search (2 trials) by the admin, over HTTP, into PostgreSQL."""
    tmp = module_tmp("team-search")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    res = run_cli("search", str(space), "--tracking-uri", team.uri, "--storage-path", str(tmp / "ray"),
                  env=creds(ADMIN), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return space, tmp


def test_search_promote_predict_through_the_team_server(team, searched, tmp_path):
    import cv2
    import numpy as np

    with as_user(ADMIN):
        client, exp, parents, children = search_runs(team.uri, SEARCH)
        assert len(parents) == 1 and len(children) == 2
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
        assert all(c.data.tags["fer_automl.status"] == "finished" for c in children)
    # the runs are rows of the PostgreSQL database
    with contextlib.closing(pg_connect(team, team.backend)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(exp.experiment_id),))
        assert cur.fetchone()[0] == 3

    res = run_cli("promote", "--tracking-uri", team.uri, "--model-name", MODEL, "--search", SEARCH, env=creds(ADMIN))
    assert res.returncode == 0, res.stderr[-3000:]
    with as_user(ADMIN):
        holder = client.get_model_version_by_alias(MODEL, "champion")
        assert holder.tags["fer_automl.run_id"] in {c.info.run_id for c in children}

    from runners.data import load_dataset

    ds = load_dataset("synthetic", None, image_size=32, n=140, size=32, seed=7, cache=False)
    image = tmp_path / "face.png"
    assert cv2.imwrite(str(image), cv2.cvtColor(np.ascontiguousarray(ds.images[0]), cv2.COLOR_RGB2BGR))
    res = run_cli("predict", str(image), "--model", f"models:/{MODEL}@champion", "--tracking-uri", team.uri, "--json",
                  env=creds(ADMIN))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout[res.stdout.index("["):])
    assert len(out) == 1 and "error" not in {k.lower() for k in out[0]}


def one_error_line(res) -> str:
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("fer-automl: error:")]
    assert len(lines) == 1, res.stderr[-3000:]
    return lines[0]


def test_a_reader_reads_but_a_search_or_promote_by_it_is_refused(team, searched):
    # the admin makes the user through MLflow's REST API and grants READ on the search's experiment
    status, body = rest(team.uri, "/api/2.0/mlflow/users/create",
                        {"username": READER[0], "password": READER[1]}, user=ADMIN)
    assert status == 200, body
    with as_user(ADMIN):
        exp = search_runs(team.uri, SEARCH)[1]
    for resource_type, resource_id in (("experiment", exp.experiment_id), ("registered_model", MODEL)):
        status, body = rest(team.uri, "/api/3.0/mlflow/users/permissions/grant",
                            {"username": READER[0], "resource_type": resource_type, "resource_id": resource_id,
                             "permission": "READ"}, user=ADMIN)
        assert status == 200, body
    status, body = rest(team.uri, f"/api/3.0/mlflow/users/permissions/get?username={READER[0]}"
                        f"&resource_type=experiment&resource_id={exp.experiment_id}", user=ADMIN)
    assert status == 200 and json.loads(body)["permission"] == "READ", body

    with as_user(READER):
        client, _, parents, children = search_runs(team.uri, SEARCH)
        assert len(parents) == 1 and len(children) == 2
        assert client.get_run(children[0].info.run_id).data.metrics

    space, tmp = searched
    res = run_cli("search", str(space), "--tracking-uri", team.uri, "--storage-path", str(tmp / "ray-reader"),
                  env=creds(READER), timeout=600)
    assert res.returncode == 6, res.stderr[-3000:]
    line = one_error_line(res)
    assert line.startswith(f"fer-automl: error: MLflow server {team.uri} refused /api/2.0/mlflow/runs/create "
                           "for user 'reader': permission denied (HTTP 403)"), line

    # promote --search again would write nothing (the best trial already holds the alias): the reader
    # tries to force the other trial in, which registers a version and moves the alias
    with as_user(ADMIN):
        holder = client.get_model_version_by_alias(MODEL, "champion").tags["fer_automl.run_id"]
    other = next(c.info.run_id for c in children if c.info.run_id != holder)
    res = run_cli("promote", "--tracking-uri", team.uri, "--model-name", MODEL, "--run", other, "--force",
                  "--reason", "reader tries", env=creds(READER))
    assert res.returncode == 6, res.stderr[-3000:]
    line = one_error_line(res)
    assert f"MLflow server {team.uri} refused /api/2.0/mlflow/" in line and "for user 'reader'" in line
    assert "permission denied (HTTP 403)" in line
    with as_user(READER):  # nothing was written by the reader
        assert len(search_runs(team.uri, SEARCH)[2]) == 1
        assert client.get_model_version_by_alias(MODEL, "champion").tags["fer_automl.run_id"] == holder
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1


def test_a_wrong_password_is_one_line_naming_the_server(team):
    res = run_cli("promote", "--tracking-uri", team.uri, "--model-name", MODEL, "--search", SEARCH,
                  env=creds((ADMIN[0], "not-the-password")))
    assert res.returncode == 6, res.stderr[-3000:]
    line = one_error_line(res)
    assert line == (f"fer-automl: error: MLflow server {team.uri} refused /api/2.0/mlflow/experiments/get-by-name: "
                    "not authenticated (HTTP 401) with the credentials of user 'admin'; set MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD to a user of that server"), line
