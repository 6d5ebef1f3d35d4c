"""The study database: what was measured, from which inputs, by which run.

One database holds one study: its design (arms, timepoints, subjects with
their covariates, sessions), every run of the pipeline, and per session the
scans it read (with content hashes), the maps it wrote, the ROIs it used and
the biomarker values it measured, with units, methods and provenance.

Backends
--------
A plain path (or a ``sqlite:///…`` URL) is a SQLite file; a
``postgresql://…`` URL is a PostgreSQL database (psycopg 3 driver). Both get
the same schema and the same guarantees:

* **Atomic sessions.** :meth:`StudyDatabase.record_session` replaces every
  row of a session in one transaction, so a run killed at any moment
  (``kill -9`` included) leaves each session either fully recorded or as it
  was before; the next run resumes from :meth:`StudyDatabase.completed`.
* **No duplicates.** Unique constraints on (session, biomarker),
  (session, role), (session, map name, parameter), (session, ROI name) and
  (subject, timepoint) make a duplicated row impossible, not just unlikely.
* **Two writers.** Two pipeline processes may write at once. SQLite runs in
  WAL mode (readers never block the writer) and every write transaction
  starts with ``BEGIN IMMEDIATE``, taking the write lock up front so that
  two writers queue on the busy timeout instead of deadlocking on a lock
  upgrade [1]_. PostgreSQL locks the session row (``SELECT … FOR UPDATE``)
  and uses ``INSERT … ON CONFLICT`` for the design [2]_. Transactions that
  lose a serialization, deadlock or lock race are retried.
* **Versioned schema.** ``schema_info`` records every applied migration
  step; :func:`StudyDatabase.open` applies the missing steps (one
  transaction each, under a lock) and refuses a database written by a newer
  oncomri.

Timestamps are UTC. Times are seconds, volumes mm^3; every measurement row
carries its unit.

References
----------
.. [1] SQLite documentation, "Write-Ahead Logging" and "BEGIN TRANSACTION"
   (https://sqlite.org/wal.html, https://sqlite.org/lang_transaction.html);
   SQLAlchemy 2 documentation, "Serializable isolation / Savepoints /
   Transactional DDL" for the pysqlite driver.
.. [2] PostgreSQL 15 documentation, chapter 13 "Concurrency Control"
   (row-level locks, ``INSERT … ON CONFLICT``, advisory locks).
"""

from __future__ import annotations

import math
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ..core.errors import MissingDependencyError, OncomriError, ValidationError
from .design import StudyDesign

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseError",
    "Migration",
    "MIGRATIONS",
    "ScanRecord",
    "MapRecord",
    "RoiRecord",
    "MeasurementRecord",
    "SessionRecord",
    "StudyDatabase",
    "MEASUREMENT_COLUMNS",
    "schema_operations",
]


class DatabaseError(OncomriError):
    """The study database cannot be opened, is too new, or stayed locked too long."""


# --------------------------------------------------------------------------- records


@dataclass
class ScanRecord:
    """One input scan of a session: its role in the spec, path and content hash."""

    role: str
    path: str
    content_hash: str
    format: str


@dataclass
class MapRecord:
    """One parameter map written for a session (``unit`` of its voxel values)."""

    name: str
    parameter: str
    path: str
    content_hash: str
    unit: str
    parameters: dict = field(default_factory=dict)
    software_version: str = ""


@dataclass
class RoiRecord:
    """One ROI of a session; ``source`` is 'mask', 'seed' or 'propagate'."""

    name: str
    source: str
    path: str
    content_hash: str
    n_voxels: int
    volume_mm3: float


@dataclass
class MeasurementRecord:
    """One biomarker value of a session, with its unit, ROI, map and method."""

    biomarker: str
    value: float
    unit: str
    roi: str
    map: str
    statistic: str
    method: str
    provenance: dict = field(default_factory=dict)


@dataclass
class SessionRecord:
    """Everything one session produced; ``timings`` are seconds per stage."""

    subject: str
    timepoint: str
    task_key: str
    scans: list[ScanRecord] = field(default_factory=list)
    maps: list[MapRecord] = field(default_factory=list)
    rois: list[RoiRecord] = field(default_factory=list)
    measurements: list[MeasurementRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


#: Columns of the tidy measurement table, in order.
MEASUREMENT_COLUMNS = (
    "subject", "arm", "timepoint", "time_s", "biomarker", "value", "unit",
    "roi", "map", "statistic", "method", "software_version",
)

_ROI_SOURCES = ("mask", "seed", "propagate")
_EXPORT_FORMATS = ("csv", "parquet")

# --------------------------------------------------------------------------- schema
#
# The tables below are the CURRENT schema, used by every query. Version 1 of
# the schema is "create all of them". When a table changes, keep the version 1
# step creating what version 1 had (freeze a copy of the old definitions) and
# append a step that alters it; never edit a released step.

_metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})
_UtcDateTime = sa.DateTime(timezone=True)

schema_info = sa.Table(
    "schema_info", _metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", _UtcDateTime, nullable=False),
)
arms = sa.Table(
    "arms", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
)
timepoints = sa.Table(
    "timepoints", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("time_s", sa.Double, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("is_baseline", sa.Boolean, nullable=False),
)
subjects = sa.Table(
    "subjects", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("arm_id", sa.Integer, sa.ForeignKey("arms.id"), nullable=False),
    sa.Column("covariates", sa.JSON, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
)
runs = sa.Table(
    "runs", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("started_at", _UtcDateTime, nullable=False),
    sa.Column("finished_at", _UtcDateTime),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("spec_hash", sa.String, nullable=False),
    sa.Column("software_version", sa.String, nullable=False),
    sa.Column("scheduler", sa.String, nullable=False),
    sa.Column("n_sessions", sa.Integer, nullable=False),
    sa.Column("n_done", sa.Integer),
    sa.Column("n_skipped", sa.Integer),
    sa.Column("n_failed", sa.Integer),
    sa.Column("host", sa.String, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
sessions = sa.Table(
    "sessions", _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subject_id", sa.Integer, sa.ForeignKey("subjects.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("timepoint_id", sa.Integer, sa.ForeignKey("timepoints.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("status", sa.String, nullable=False),          # pending | ok | failed
    sa.Column("task_key", sa.String),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("software_version", sa.String),
    sa.Column("updated_at", _UtcDateTime),
    sa.Column("failed_stage", sa.String),
    sa.Column("failure_reason", sa.Text),
    sa.UniqueConstraint("subject_id", "timepoint_id"),
)


def _child(name: str, *columns, unique: tuple[str, ...]) -> sa.Table:
    return sa.Table(
        name, _metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=False),
        *columns,
        sa.UniqueConstraint("session_id", *unique),
    )


scans_t = _child(
    "scans",
    sa.Column("role", sa.String, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String, nullable=False),
    sa.Column("format", sa.String, nullable=False),
    unique=("role",),
)
maps_t = _child(
    "maps",
    sa.Column("name", sa.String, nullable=False),
    sa.Column("parameter", sa.String, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String, nullable=False),
    sa.Column("unit", sa.String, nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("software_version", sa.String, nullable=False),
    unique=("name", "parameter"),
)
rois_t = _child(
    "rois",
    sa.Column("name", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String, nullable=False),
    sa.Column("n_voxels", sa.BigInteger, nullable=False),
    sa.Column("volume_mm3", sa.Double, nullable=False),
    unique=("name",),
)
measurements_t = _child(
    "measurements",
    sa.Column("biomarker", sa.String, nullable=False),
    sa.Column("value", sa.Double),                             # NULL: not measurable (NaN)
    sa.Column("unit", sa.String, nullable=False),
    sa.Column("roi", sa.String, nullable=False),
    sa.Column("map", sa.String, nullable=False),
    sa.Column("statistic", sa.String, nullable=False),
    sa.Column("method", sa.String, nullable=False),
    sa.Column("provenance", sa.JSON, nullable=False),
    unique=("biomarker",),
)
timings_t = _child(
    "session_timings",
    sa.Column("stage", sa.String, nullable=False),
    sa.Column("seconds", sa.Double, nullable=False),
    unique=("stage",),
)
_SESSION_CHILDREN = (scans_t, maps_t, rois_t, measurements_t, timings_t)


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One schema migration step: it brings the schema to ``version``.

    ``apply(connection)`` runs inside the step's own write transaction (on
    both backends DDL is transactional), which also records the version in
    ``schema_info``; a step that fails leaves the schema at the version
    before it. :func:`schema_operations` gives portable DDL (alembic
    ``Operations``) for steps that alter tables.
    """

    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _create_v1(conn: sa.Connection) -> None:
    _metadata.create_all(conn)


#: The migration steps of this oncomri, in order; the last one's version is
#: :data:`SCHEMA_VERSION`.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the study tables", _create_v1),
)
SCHEMA_VERSION: int = MIGRATIONS[-1].version


def schema_operations(conn: sa.Connection):
    """Alembic ``Operations`` bound to ``conn``, for DDL inside a :class:`Migration`.

    Use ``ops.batch_alter_table`` for changes SQLite cannot make in place
    (dropping or altering columns); ``add_column`` works directly.
    """
    try:
        from alembic.migration import MigrationContext
        from alembic.operations import Operations
    except ImportError:  # pragma: no cover - alembic is a dependency
        raise MissingDependencyError(
            "schema migrations need alembic; install it with `pip install alembic`") from None
    return Operations(MigrationContext.configure(conn))


# --------------------------------------------------------------------------- helpers

_LOCK_TIMEOUT_S = 30.0         # default wait for a lock held by another process
_RETRIES = 4                   # attempts of a write transaction that lost a race
_PG_RETRY_STATES = {"40001", "40P01", "55P03"}   # serialization, deadlock, lock not available
_PG_LOCK_KEY = 0x6F6E636F      # advisory lock serialising migrations ("onco")


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 probes it)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _jsonable(value: Any) -> Any:
    """``value`` as strict JSON: numpy scalars unwrapped, NaN/inf as null."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()                    # numpy scalar -> Python scalar
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _text(value: Any, what: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what}: expected a string, got {type(value).__name__}; "
                              "pass it as str")
    if not empty and not value:
        raise ValidationError(f"{what}: is empty; give a non-empty string")
    return value


def _number(value: Any, what: str) -> float | None:
    """A float for the database; NaN becomes NULL (not measurable)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{what}: {value!r} is not a number; pass a float "
                              "(NaN when it cannot be measured)") from None
    return out if not math.isnan(out) else None


def _unique(items: Iterable, key: Callable, what: str) -> None:
    seen = set()
    for item in items:
        k = key(item)
        if k in seen:
            raise ValidationError(f"{what}: {k!r} appears twice; record each once")
        seen.add(k)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_retryable(exc: sa_exc.DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    if code in _PG_RETRY_STATES:
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text


def _to_url(url_or_path) -> sa.URL:
    """A SQLAlchemy URL from a path or URL string (psycopg 3 driver for PostgreSQL)."""
    if isinstance(url_or_path, os.PathLike) or (
            isinstance(url_or_path, str) and "://" not in url_or_path):
        path = Path(os.fspath(url_or_path)).expanduser()
        if not str(path):
            raise DatabaseError("empty database path; give a file path or a URL")
        return sa.make_url("sqlite:///" + str(path.resolve()))
    if not isinstance(url_or_path, str):
        raise DatabaseError(f"database {url_or_path!r}: expected a path or a URL string")
    try:
        url = sa.make_url(url_or_path)
    except sa_exc.ArgumentError:
        raise DatabaseError(f"database URL {url_or_path.split('@')[-1]!r} cannot be parsed; "
                            "use a file path, sqlite:///path or "
                            "postgresql://user@host:port/dbname") from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+" + (driver or "psycopg"))
    if backend == "sqlite":
        return url
    raise DatabaseError(
        f"database {url.render_as_string(hide_password=True)}: the {backend!r} backend is "
        "not supported; use a file path, sqlite:///path or postgresql://user@host/dbname")


# --------------------------------------------------------------------------- database


class StudyDatabase:
    """A study database on SQLite or PostgreSQL; open it with :meth:`open`.

    Only the pipeline's main process writes; two pipeline processes may run
    at once on one database. Every read method returns a pandas DataFrame
    with plain string columns and units named in a column or column name.
    """

    def __init__(self, engine: sa.Engine, url: sa.URL, migrations: Sequence[Migration],
                 lock_timeout_s: float = _LOCK_TIMEOUT_S):
        self._engine = engine
        self._lock_timeout_s = lock_timeout_s
        self._sa_url = url
        self._migrations = tuple(migrations)
        self._is_sqlite = url.get_backend_name() == "sqlite"
        #: The database URL with the password hidden (safe to print).
        self.url: str = url.render_as_string(hide_password=True)

    # ------------------------------------------------------------- opening

    @classmethod
    def open(cls, url_or_path, *, create: bool = True,
             migrations: Sequence[Migration] | None = None,
             lock_timeout_s: float = _LOCK_TIMEOUT_S) -> "StudyDatabase":
        """Open (and create or migrate) a study database.

        Parameters
        ----------
        url_or_path : str or path-like
            A file path (SQLite; its folder is created), a ``sqlite:///path``
            URL, or a ``postgresql://user[:password]@host[:port]/dbname`` URL
            (the psycopg 3 driver is used).
        create : bool
            Create the database and its schema when absent. With False, a
            missing SQLite file or an empty database is an error.
        migrations : sequence of Migration, optional
            The migration steps (default :data:`MIGRATIONS`); for tests of the
            migration runner.
        lock_timeout_s : float
            How long one attempt waits for a lock another process holds
            (SQLite ``busy_timeout``, PostgreSQL ``lock_timeout``), in seconds;
            a write is attempted a few times before :class:`DatabaseError`.

        Raises
        ------
        DatabaseError
            The database cannot be reached, is not a study database, was
            written by a newer oncomri, or stayed locked too long.
        """
        migrations = tuple(MIGRATIONS if migrations is None else migrations)
        if not (isinstance(lock_timeout_s, (int, float)) and lock_timeout_s > 0):
            raise ValidationError(f"lock_timeout_s: {lock_timeout_s!r} must be a positive "
                                  "number of seconds")
        versions = [m.version for m in migrations]
        if not versions or versions != list(range(1, len(versions) + 1)):
            raise ValidationError("migrations: versions must be 1, 2, 3, ... in order; "
                                  f"got {versions}")
        url = _to_url(url_or_path)
        shown = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            path = Path(url.database)
            if not path.exists():
                if not create:
                    raise DatabaseError(f"no study database at {path}; run the study first "
                                        "or give the right --db path")
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DatabaseError(f"cannot create the folder of database {shown}: "
                                        f"{exc.strerror}; choose a writable location") from None
        try:
            engine = cls._make_engine(url, float(lock_timeout_s))
        except (ImportError, sa_exc.NoSuchModuleError) as exc:
            raise MissingDependencyError(
                f"database {shown}: driver missing ({_first_line(exc)}); install it with "
                "`pip install 'psycopg[binary]'`") from None
        db = cls(engine, url, migrations, float(lock_timeout_s))
        try:
            db._migrate(create=create)
        except BaseException:
            engine.dispose()
            raise
        return db

    @staticmethod
    def _make_engine(url: sa.URL, lock_timeout_s: float) -> sa.Engine:
        ms = max(1, int(round(lock_timeout_s * 1000)))
        if url.get_backend_name() != "sqlite":
            return sa.create_engine(url, pool_pre_ping=True, pool_size=2, connect_args={
                "connect_timeout": 10, "options": f"-c lock_timeout={ms}"})
        engine = sa.create_engine(url, connect_args={"timeout": lock_timeout_s})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _on_begin).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {ms}")
            cur.execute("PRAGMA foreign_keys = ON")
            if url.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = FULL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn):
            write = conn.get_execution_options().get("oncomri_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    # ------------------------------------------------------------- transactions

    def _error(self, exc: BaseException, what: str) -> DatabaseError:
        msg = _first_line(exc)
        low = msg.lower()
        if isinstance(exc, sa_exc.DBAPIError) and _is_retryable(exc):
            return DatabaseError(
                f"database {self.url} stayed locked by another process for more than "
                f"{self._lock_timeout_s * _RETRIES:g} s while {what}; "
                "wait for the other oncomri run to finish (or stop it) and run again")
        if self._is_sqlite:
            if "unable to open" in low or "readonly" in low or "read-only" in low:
                return DatabaseError(f"cannot open or write SQLite database {self.url} "
                                     f"while {what} ({msg}); check that the file and its "
                                     "folder are writable, or give another --db path")
            if "not a database" in low or "malformed" in low:
                return DatabaseError(f"{self.url} is not a usable SQLite database ({msg}); "
                                     "give another --db path or restore the file")
        elif isinstance(exc, sa_exc.OperationalError) and (
                getattr(getattr(exc, "orig", None), "sqlstate", None) in (None, "")
                or str(getattr(exc.orig, "sqlstate", "")).startswith(("08", "28", "3D"))):
            return DatabaseError(
                f"cannot connect to database {self.url} ({msg}); check that the server "
                "is running and the URL's host, port, user, password and database name")
        return DatabaseError(f"database {self.url}: {what} failed ({msg}); if the database "
                             "was modified by hand, restore it or use a fresh one")

    def _read(self, fn: Callable[[sa.Connection], Any], what: str) -> Any:
        try:
            with self._engine.connect() as conn, conn.begin():
                return fn(conn)
        except sa_exc.SQLAlchemyError as exc:
            raise self._error(exc, what) from None

    def _write(self, fn: Callable[[sa.Connection], Any], what: str) -> Any:
        """Run ``fn(conn)`` in one write transaction, retried when it lost a race."""
        for attempt in range(_RETRIES):
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(oncomri_write=True)
                    with conn.begin():
                        return fn(conn)
            except sa_exc.DBAPIError as exc:
                if _is_retryable(exc) and attempt + 1 < _RETRIES:
                    time.sleep(0.05 * (2 ** attempt) * (1 + random.random()))
                    continue
                raise self._error(exc, what) from None
            except sa_exc.SQLAlchemyError as exc:
                raise self._error(exc, what) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------- schema

    @staticmethod
    def _version_in(conn: sa.Connection) -> int:
        if not sa.inspect(conn).has_table("schema_info"):
            return 0
        return int(conn.execute(sa.select(sa.func.max(schema_info.c.version))).scalar() or 0)

    def _migrate(self, *, create: bool) -> None:
        target = self._migrations[-1].version

        def check(conn):
            # Tables first, version second: under READ COMMITTED each statement sees the
            # latest commits, and another process's schema creation commits the tables
            # and their schema_info row together, so tables seen here imply the row is
            # visible to the next statement (the other order raced with that commit).
            existing = set(sa.inspect(conn).get_table_names())
            current = self._version_in(conn)
            if current > target:
                from .. import __version__
                raise DatabaseError(
                    f"database {self.url} has schema version {current} but this oncomri "
                    f"({__version__}) knows versions up to {target}; upgrade oncomri "
                    "(pip install -U oncomri) or use another database")
            if current == 0:
                ours = {t.name for t in _metadata.sorted_tables}
                found = ours & existing
                if found:
                    raise DatabaseError(
                        f"database {self.url} has tables {sorted(found)} but no schema_info; "
                        "it is not an oncomri study database: give another one")
                if not create:
                    raise DatabaseError(f"database {self.url} holds no study; run the study "
                                        "first or give the right --db")
            return current

        if self._read(check, "reading the schema version") == target:
            return
        for step in self._migrations:
            def apply(conn, step=step):
                if not self._is_sqlite:
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
                current = check(conn)
                if current >= step.version:
                    return                       # another process applied it meanwhile
                if current != step.version - 1:  # pragma: no cover - steps run in order
                    raise DatabaseError(f"database {self.url}: schema version {current} "
                                        f"cannot be migrated by step {step.version}")
                step.apply(conn)
                conn.execute(sa.insert(schema_info).values(
                    version=step.version, description=step.description, applied_at=_now()))

            self._write(apply, f"migrating the schema to version {step.version}")

    def schema_version(self) -> int:
        """The schema version of the database (the highest applied migration step)."""
        return self._read(self._version_in, "reading the schema version")

    # ------------------------------------------------------------- design

    def _insert(self, table: sa.Table):
        if self._is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table)

    def sync_design(self, design: StudyDesign) -> None:
        """Store the design: upsert arms, timepoints, subjects (with covariates) and sessions.

        Idempotent; rows of arms, subjects or sessions no longer in the design
        are kept (with their results) but :meth:`measurements` with a design
        leaves them out. Safe when two processes call it at once.
        """
        if not isinstance(design, StudyDesign):
            raise ValidationError(f"design: expected a StudyDesign, got "
                                  f"{type(design).__name__}; build it with spec.design()")

        def sync(conn):
            if design.arms:
                stmt = self._insert(arms)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=[arms.c.name],
                    set_={"description": stmt.excluded.description,
                          "position": stmt.excluded.position}),
                    [{"name": a.name, "description": a.description or "", "position": i}
                     for i, a in enumerate(design.arms)])
            if design.timepoints:
                stmt = self._insert(timepoints)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=[timepoints.c.name],
                    set_={"time_s": stmt.excluded.time_s, "position": stmt.excluded.position,
                          "is_baseline": stmt.excluded.is_baseline}),
                    [{"name": t.name, "time_s": float(t.time_s), "position": i,
                      "is_baseline": t.name == design.baseline}
                     for i, t in enumerate(design.timepoints)])
            arm_id = dict(conn.execute(sa.select(arms.c.name, arms.c.id)).all())
            if design.subjects:
                rows = []
                for i, s in enumerate(design.subjects):
                    if s.arm not in arm_id:
                        raise ValidationError(f"design: subject {s.id!r} is in arm {s.arm!r}, "
                                              "which is not an arm of the design; fix the spec")
                    rows.append({"name": s.id, "arm_id": arm_id[s.arm], "position": i,
                                 "covariates": _jsonable(dict(s.covariates or {}))})
                stmt = self._insert(subjects)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=[subjects.c.name],
                    set_={"arm_id": stmt.excluded.arm_id, "position": stmt.excluded.position,
                          "covariates": stmt.excluded.covariates}), rows)
            subject_id = dict(conn.execute(sa.select(subjects.c.name, subjects.c.id)).all())
            timepoint_id = dict(conn.execute(sa.select(timepoints.c.name, timepoints.c.id)).all())
            rows = []
            for subject, timepoint in design.sessions:
                if subject not in subject_id or timepoint not in timepoint_id:
                    raise ValidationError(f"design: session ({subject}, {timepoint}) names an "
                                          "unknown subject or timepoint; fix the spec")
                rows.append({"subject_id": subject_id[subject],
                             "timepoint_id": timepoint_id[timepoint], "status": "pending"})
            if rows:
                stmt = self._insert(sessions)
                conn.execute(stmt.on_conflict_do_nothing(
                    index_elements=[sessions.c.subject_id, sessions.c.timepoint_id]), rows)

        self._write(sync, f"storing the design of study {design.name!r}")

    # ------------------------------------------------------------- runs and sessions

    def completed(self) -> dict[tuple[str, str], str]:
        """``(subject, timepoint) -> task_key`` of every session with recorded results."""
        def read(conn):
            q = (sa.select(subjects.c.name, timepoints.c.name, sessions.c.task_key)
                 .select_from(sessions.join(subjects).join(timepoints))
                 .where(sessions.c.status == "ok"))
            return {(s, t): k for s, t, k in conn.execute(q)}
        return self._read(read, "reading the completed sessions")

    def begin_run(self, *, spec_hash: str, software_version: str, n_sessions: int,
                  scheduler: str) -> int:
        """Record the start of a pipeline run; returns its id (for the record calls)."""
        row = {"started_at": _now(), "status": "running",
               "spec_hash": _text(spec_hash, "spec_hash"),
               "software_version": _text(software_version, "software_version"),
               "scheduler": _text(scheduler, "scheduler"), "n_sessions": int(n_sessions),
               "host": socket.gethostname(), "pid": os.getpid()}

        def insert(conn):
            # Runs of this host left 'running' by a process that no longer exists were
            # killed (kill -9, power loss): say so instead of leaving them running forever.
            stale = conn.execute(sa.select(runs.c.id, runs.c.pid).where(
                runs.c.status == "running", runs.c.host == row["host"])).fetchall()
            gone = [run_id for run_id, pid in stale if not _process_alive(pid)]
            if gone:
                conn.execute(sa.update(runs).where(runs.c.id.in_(gone))
                             .values(status="interrupted"))
            return int(conn.execute(sa.insert(runs).values(**row).returning(runs.c.id))
                       .scalar_one())
        return self._write(insert, "starting a run")

    def finish_run(self, run_id: int, *, n_done: int, n_skipped: int, n_failed: int,
                   status: str) -> None:
        """Record the end of run ``run_id`` with its counts and final status."""
        values = {"finished_at": _now(), "status": _text(status, "status", empty=False),
                  "n_done": int(n_done), "n_skipped": int(n_skipped), "n_failed": int(n_failed)}

        def update(conn):
            n = conn.execute(sa.update(runs).where(runs.c.id == int(run_id)).values(**values))
            if n.rowcount != 1:
                raise DatabaseError(f"database {self.url} has no run {run_id}; "
                                    "pass the id that begin_run returned")
        self._write(update, f"finishing run {run_id}")

    def _claim_session(self, conn, run_id: int, subject: str, timepoint: str):
        """(session id, run software version), the session row locked for update."""
        version = conn.execute(sa.select(runs.c.software_version)
                               .where(runs.c.id == int(run_id))).scalar_one_or_none()
        if version is None:
            raise DatabaseError(f"database {self.url} has no run {run_id}; call begin_run "
                                "first and pass the id it returned")
        q = (sa.select(sessions.c.id)
             .select_from(sessions.join(subjects).join(timepoints))
             .where(subjects.c.name == subject, timepoints.c.name == timepoint)
             .with_for_update(of=sessions))
        session_id = conn.execute(q).scalar_one_or_none()
        if session_id is None:
            raise DatabaseError(f"database {self.url} has no session ({subject}, {timepoint}); "
                                "call sync_design(design) before recording it")
        for table in _SESSION_CHILDREN:
            conn.execute(sa.delete(table).where(table.c.session_id == session_id))
        return session_id, version

    def record_session(self, run_id: int, record: SessionRecord) -> None:
        """Store the results of one session in ONE transaction.

        Every scan, map, ROI, measurement and timing row of the session is
        replaced by those of ``record``; the session gets ``record.task_key``,
        status 'ok' and the run's software version, and a previous failure is
        cleared. Concurrent calls for the same session serialize on the
        session row; the last one wins, and no row is ever duplicated.
        """
        rows = self._session_rows(record)
        subject, timepoint = record.subject, record.timepoint

        def store(conn):
            session_id, version = self._claim_session(conn, run_id, subject, timepoint)
            for table, table_rows in rows.items():
                if table_rows:
                    conn.execute(sa.insert(table),
                                 [dict(r, session_id=session_id) for r in table_rows])
            conn.execute(sa.update(sessions).where(sessions.c.id == session_id).values(
                status="ok", task_key=record.task_key, run_id=int(run_id),
                software_version=version, updated_at=_now(),
                failed_stage=None, failure_reason=None))

        self._write(store, f"recording session ({subject}, {timepoint})")

    @staticmethod
    def _session_rows(record: SessionRecord) -> dict[sa.Table, list[dict]]:
        """Validated row dicts of ``record`` per child table."""
        if not isinstance(record, SessionRecord):
            raise ValidationError(f"record: expected a SessionRecord, got "
                                  f"{type(record).__name__}")
        where = f"session ({record.subject}, {record.timepoint})"
        _text(record.subject, f"{where}: subject", empty=False)
        _text(record.timepoint, f"{where}: timepoint", empty=False)
        _text(record.task_key, f"{where}: task_key", empty=False)
        _unique(record.scans, lambda r: r.role, f"{where}: scan role")
        _unique(record.maps, lambda r: (r.name, r.parameter), f"{where}: map (name, parameter)")
        _unique(record.rois, lambda r: r.name, f"{where}: ROI")
        _unique(record.measurements, lambda r: r.biomarker, f"{where}: biomarker")
        for r in record.rois:
            if r.source not in _ROI_SOURCES:
                raise ValidationError(f"{where}: ROI {r.name!r} has source {r.source!r}; "
                                      f"use one of {', '.join(_ROI_SOURCES)}")
        s = lambda v, w: _text(v, f"{where}: {w}")  # noqa: E731
        scans_rows = [{"role": s(r.role, "scan role"), "path": s(str(r.path), "scan path"),
                       "content_hash": s(r.content_hash, "scan content_hash"),
                       "format": s(r.format, "scan format")} for r in record.scans]
        maps_rows = [{"name": s(r.name, "map name"), "parameter": s(r.parameter, "map parameter"),
                      "path": s(str(r.path), "map path"),
                      "content_hash": s(r.content_hash, "map content_hash"),
                      "unit": s(r.unit, "map unit"),
                      "parameters": _jsonable(dict(r.parameters or {})),
                      "software_version": s(r.software_version, "map software_version")}
                     for r in record.maps]
        rois_rows = []
        for r in record.rois:
            volume = _number(r.volume_mm3, f"{where}: ROI {r.name!r} volume_mm3")
            rois_rows.append({"name": s(r.name, "ROI name"), "source": r.source,
                              "path": s(str(r.path), "ROI path"),
                              "content_hash": s(r.content_hash, "ROI content_hash"),
                              "n_voxels": int(r.n_voxels),
                              "volume_mm3": volume if volume is not None else 0.0})
        meas_rows = [{"biomarker": s(m.biomarker, "biomarker"),
                      "value": _number(m.value, f"{where}: biomarker {m.biomarker!r} value"),
                      "unit": s(m.unit, "unit"), "roi": s(m.roi, "roi"), "map": s(m.map, "map"),
                      "statistic": s(m.statistic, "statistic"), "method": s(m.method, "method"),
                      "provenance": _jsonable(dict(m.provenance or {}))}
                     for m in record.measurements]
        timing_rows = []
        for stage, seconds in dict(record.timings or {}).items():
            value = _number(seconds, f"{where}: timing of stage {stage!r}")
            timing_rows.append({"stage": s(stage, "timing stage"),
                                "seconds": value if value is not None else 0.0})
        return {scans_t: scans_rows, maps_t: maps_rows, rois_t: rois_rows,
                measurements_t: meas_rows, timings_t: timing_rows}

    def record_failure(self, run_id: int, *, subject: str, timepoint: str, task_key: str,
                       stage: str, reason: str) -> None:
        """Mark a session failed at ``stage`` with ``reason`` (one line, for the user).

        Earlier results of the session are removed: they came from other
        inputs or another spec than the ones that just failed.
        """
        _text(task_key, "task_key")

        def store(conn):
            session_id, version = self._claim_session(conn, run_id, subject, timepoint)
            conn.execute(sa.update(sessions).where(sessions.c.id == session_id).values(
                status="failed", task_key=task_key, run_id=int(run_id), software_version=version,
                updated_at=_now(), failed_stage=str(stage), failure_reason=str(reason)))

        self._write(store, f"recording the failure of session ({subject}, {timepoint})")

    # ------------------------------------------------------------- tables

    def _frame(self, query, columns: Sequence[str], what: str):
        import pandas as pd

        def read(conn):
            return [tuple(r) for r in conn.execute(query)]
        rows = self._read(read, what)
        return pd.DataFrame.from_records(rows, columns=list(columns))

    def _per_session(self, table: sa.Table, columns: Sequence[str], what: str):
        cols = [getattr(table.c, c) for c in columns]
        q = (sa.select(subjects.c.name, arms.c.name, timepoints.c.name, *cols)
             .select_from(table.join(sessions).join(subjects).join(arms).join(timepoints))
             .order_by(subjects.c.position, subjects.c.name, timepoints.c.time_s,
                       timepoints.c.name, table.c.id))
        return self._frame(q, ["subject", "arm", "timepoint", *columns], what)

    def measurements(self, design: StudyDesign | None = None):
        """The tidy measurement table: one row per (session, biomarker).

        Columns, in order: ``subject, arm, timepoint, time_s`` (seconds after
        treatment), ``biomarker, value, unit, roi, map, statistic, method,
        software_version``. ``value`` is NaN where a biomarker could not be
        measured; ``map`` is "" for geometric biomarkers.

        Parameters
        ----------
        design : StudyDesign, optional
            Keep only the sessions of this design, with its arms and times,
            rows ordered by the design's subjects then timepoints (otherwise:
            every recorded session, ordered as last synced).
        """
        import numpy as np
        import pandas as pd

        q = (sa.select(subjects.c.name, arms.c.name, timepoints.c.name, timepoints.c.time_s,
                       measurements_t.c.biomarker, measurements_t.c.value, measurements_t.c.unit,
                       measurements_t.c.roi, measurements_t.c.map, measurements_t.c.statistic,
                       measurements_t.c.method, sessions.c.software_version)
             .select_from(measurements_t.join(sessions).join(subjects).join(arms)
                          .join(timepoints))
             .where(sessions.c.status == "ok")
             .order_by(subjects.c.position, subjects.c.name, timepoints.c.time_s,
                       timepoints.c.name, measurements_t.c.id))
        df = self._frame(q, MEASUREMENT_COLUMNS, "reading the measurements")
        if design is not None:
            wanted = set(design.sessions)
            keep = [(s, t) in wanted for s, t in zip(df["subject"], df["timepoint"])]
            df = df.loc[keep].copy()
            subject_order = {s.id: i for i, s in enumerate(design.subjects)}
            time_order = {t.name: i for i, t in enumerate(design.timepoints)}
            df["arm"] = [design.arm_of(s) for s in df["subject"]]
            df["time_s"] = [float(design.time_of(t)) for t in df["timepoint"]]
            order = np.lexsort((np.arange(len(df)),
                                [time_order[t] for t in df["timepoint"]],
                                [subject_order[s] for s in df["subject"]]))
            df = df.iloc[order]
        df = df.reset_index(drop=True)
        df["time_s"] = df["time_s"].astype(float)
        df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
        for col in MEASUREMENT_COLUMNS:
            if col not in ("time_s", "value"):
                df[col] = df[col].astype(object).where(df[col].notna(), "")
        return df

    def maps(self):
        """Maps: subject, arm, timepoint, name, parameter, path, content_hash, unit,
        software_version (``unit`` of the map's voxel values)."""
        return self._per_session(maps_t, ["name", "parameter", "path", "content_hash", "unit",
                                          "software_version"], "reading the maps")

    def rois(self):
        """ROIs: subject, arm, timepoint, name, source, path, content_hash, n_voxels, volume_mm3."""
        df = self._per_session(rois_t, ["name", "source", "path", "content_hash", "n_voxels",
                                        "volume_mm3"], "reading the ROIs")
        df["n_voxels"] = df["n_voxels"].astype("int64")
        df["volume_mm3"] = df["volume_mm3"].astype(float)
        return df

    def scans(self):
        """Scans: subject, arm, timepoint, role, path, content_hash, format."""
        return self._per_session(scans_t, ["role", "path", "content_hash", "format"],
                                 "reading the scans")

    def session_timings(self):
        """Seconds per stage of each recorded session: subject, timepoint, stage, seconds."""
        df = self._per_session(timings_t, ["stage", "seconds"], "reading the timings")
        df = df.drop(columns="arm")
        df["seconds"] = df["seconds"].astype(float)
        return df

    def failures(self):
        """Sessions currently failed: subject, timepoint, stage, reason, run_id, at (UTC)."""
        import pandas as pd

        q = (sa.select(subjects.c.name, timepoints.c.name, sessions.c.failed_stage,
                       sessions.c.failure_reason, sessions.c.run_id, sessions.c.updated_at)
             .select_from(sessions.join(subjects).join(timepoints))
             .where(sessions.c.status == "failed")
             .order_by(subjects.c.position, subjects.c.name, timepoints.c.time_s))
        df = self._frame(q, ["subject", "timepoint", "stage", "reason", "run_id", "at"],
                         "reading the failures")
        df["run_id"] = df["run_id"].astype("int64")
        df["at"] = pd.to_datetime(df["at"], utc=True)
        return df

    def runs(self):
        """Every run: run_id, started_at, finished_at (UTC), status, counts, versions, host."""
        import pandas as pd

        cols = ["id", "started_at", "finished_at", "status", "spec_hash", "software_version",
                "scheduler", "n_sessions", "n_done", "n_skipped", "n_failed", "host", "pid"]
        q = sa.select(*[runs.c[c] for c in cols]).order_by(runs.c.id)
        df = self._frame(q, ["run_id", *cols[1:]], "reading the runs")
        for c in ("started_at", "finished_at"):
            df[c] = pd.to_datetime(df[c], utc=True)
        for c in ("run_id", "n_sessions", "pid"):
            df[c] = df[c].astype("int64")
        for c in ("n_done", "n_skipped", "n_failed"):
            df[c] = df[c].astype("Int64")
        return df

    # ------------------------------------------------------------- export

    def export(self, out_dir, *, design: StudyDesign | None = None,
               formats: Sequence[str] = ("csv", "parquet")) -> list[Path]:
        """Write the tidy tables to ``out_dir``; returns the paths written.

        ``measurements.csv`` and/or ``measurements.parquet`` (per ``formats``;
        the columns of :meth:`measurements`, units in column ``unit``), and
        ``maps.csv``, ``rois.csv`` and ``failures.csv``. Every file is written
        under a temporary name and moved into place (``os.replace``), so a
        reader never sees a half-written table.
        """
        formats = tuple(formats)
        unknown = [f for f in formats if f not in _EXPORT_FORMATS]
        if unknown or not formats:
            raise ValidationError(f"formats: {unknown or 'nothing'} is not an export format; "
                                  f"use any of {', '.join(_EXPORT_FORMATS)}")
        if "parquet" in formats:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise MissingDependencyError("Parquet export needs pyarrow; install it with "
                                             "`pip install pyarrow` or export csv only") from None
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create export folder {out_dir}: {exc.strerror}; "
                                "choose a writable folder") from None
        failures = self.failures()
        failures["at"] = failures["at"].map(lambda t: t.isoformat() if not _isnull(t) else "")
        meas = self.measurements(design)
        jobs: list[tuple[str, Callable[[Path], None]]] = []
        if "csv" in formats:
            jobs.append(("measurements.csv", lambda p: meas.to_csv(p, index=False)))
        if "parquet" in formats:
            jobs.append(("measurements.parquet", lambda p: meas.to_parquet(p, index=False)))
        for name, frame in (("maps", self.maps()), ("rois", self.rois()),
                            ("failures", failures)):
            jobs.append((f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False)))
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        temps: dict[Path, Path] = {}
        try:
            for name, write in jobs:
                final = out_dir / name
                tmp = out_dir / f".tmp-{token}-{name}"
                temps[final] = tmp
                write(tmp)
            for final, tmp in temps.items():
                os.replace(tmp, final)
        except OSError as exc:
            raise DatabaseError(f"cannot write the export to {out_dir}: {exc}; check free "
                                "space and permissions") from None
        finally:
            for tmp in temps.values():
                if tmp.exists():
                    tmp.unlink()
        return list(temps)

    # ------------------------------------------------------------- closing

    def close(self) -> None:
        """Release the connections (the database stays as it is)."""
        self._engine.dispose()

    def __enter__(self) -> "StudyDatabase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StudyDatabase({self.url!r})"


def _isnull(value) -> bool:
    import pandas as pd
    return bool(pd.isna(value))
