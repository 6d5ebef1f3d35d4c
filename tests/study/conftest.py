"""Fixtures of the study tests: a real, throwaway PostgreSQL server and fresh databases.

``postgres_url``  (session scope) URL of a database on a PostgreSQL server
                  started for this test session (initdb + pg_ctl in a temp
                  folder, TCP on 127.0.0.1 and a free port, trust auth); the
                  server is stopped and deleted at the end.
``db_url``        (function scope, parametrized ``sqlite`` / ``postgresql``)
                  URL of a fresh, empty database for one test: a SQLite file
                  in ``tmp_path`` or a newly created PostgreSQL database.
                  Pass it to ``StudyDatabase.open`` (or the pipeline/CLI).

PostgreSQL binaries come from the Debian ``postgresql`` package, which
``make test`` installs; without them the PostgreSQL fixtures fail (they do
not skip: the PostgreSQL backend is part of what the suite checks).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

_PG_USER = "oncomri"          # database superuser created by initdb


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: [int(x) if x.isdigit() else 0
                                       for x in Path(p).parts[-3].split(".")])
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _system_user() -> str | None:
    """The account to run the server as when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "postgres"], check=True, capture_output=True)
    return "postgres"


def _run(cmd: list[str], user: str | None, **kw) -> subprocess.CompletedProcess:
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _admin_sql(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def postgres_url():
    """URL (``postgresql://oncomri@127.0.0.1:<port>/oncomri_test``) of a throwaway server."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
                    "/usr/lib/postgresql/*/bin; run `make test`, which installs the "
                    "'postgresql' system package", pytrace=False)
    user = _system_user()
    root = Path(tempfile.mkdtemp(prefix="oncomri-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if user is not None:
        pw = pwd.getpwnam(user)
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    log = root / "server.log"
    started = False
    try:
        r = _run([initdb, "-D", str(data), "-U", _PG_USER, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync"], user)
        if r.returncode != 0:
            pytest.fail(f"initdb failed: {r.stderr.strip()[-500:]}", pytrace=False)
        port = _free_port()
        opts = (f"-k {sock} -p {port} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=100")
        r = _run([pg_ctl, "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60",
                  "start"], user)
        if r.returncode != 0:
            tail = log.read_text()[-800:] if log.exists() else r.stderr
            pytest.fail(f"PostgreSQL did not start: {tail.strip()}", pytrace=False)
        started = True
        server = f"postgresql://{_PG_USER}@127.0.0.1:{port}"
        _admin_sql(f"{server}/postgres", "CREATE DATABASE oncomri_test")
        yield f"{server}/oncomri_test"
    finally:
        if started:
            _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], user)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """URL of a fresh empty database for this test, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.sqlite'}"
        return
    base = request.getfixturevalue("postgres_url")
    server = base.rsplit("/", 1)[0]
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin_sql(base, f"CREATE DATABASE {name}")
    yield f"{server}/{name}"
    try:
        _admin_sql(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except Exception:  # noqa: BLE001 - a leftover database dies with the server
        pass
