"""Where a study lives: one place that turns what the user typed into an optuna storage.

========================================  ================================================
What the user passes                      Storage
========================================  ================================================
``None`` (one worker)                     SQLite file ``autowarm.db`` in the working dir
``None`` (several workers on one host)    journal file ``autowarm.journal.log``
``sqlite:///path.db``, ``path.db``        :class:`optuna.storages.RDBStorage`, heartbeat on
``journal:///path.log``, ``path.log``     :class:`optuna.storages.journal.JournalStorage`
``postgresql://...``, ``mysql://...``     :class:`optuna.storages.RDBStorage`, heartbeat on
========================================  ================================================

RDB storages get a heartbeat, so a trial whose worker was killed is failed and re-queued by
optuna once its heartbeat is ``grace_period`` seconds old. Journal files have no heartbeat:
there a running trial carries a liveness stamp (:func:`keep_alive`), and
:func:`fail_dead_trials` fails one whose stamp stopped, whatever host ran it, and, at once, one
whose worker process on this host no longer exists (on any storage).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shlex
import socket
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from autowarm._checks import is_int
from autowarm.study import _attrs

__all__ = [
    "DEFAULT_JOURNAL",
    "DEFAULT_SQLITE",
    "HEARTBEAT_INTERVAL",
    "default_storage_url",
    "fail_dead_trials",
    "keep_alive",
    "load_study",
    "normalize_url",
    "open_storage",
    "quiet_experimental",
    "redact",
    "requeue",
    "setup_lock",
    "url_of",
    "worker_id",
]

_logger = logging.getLogger("autowarm")

DEFAULT_SQLITE = "autowarm.db"
DEFAULT_JOURNAL = "autowarm.journal.log"
HEARTBEAT_INTERVAL = 30
"""Seconds between a running trial's heartbeats in an RDB storage, and between its liveness
stamps in a journal file; a trial silent for 4 intervals counts as dead."""
_MAX_RETRY = 2
NOT_QUEUED_AGAIN = "not queued again"
"""In the reason of a trial whose worker died on each of its runs, which is left failed."""
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def default_storage_url(n_workers: int = 1, *, claim: bool = False) -> str:
    """The storage used when none is given, in the working directory: the default file that
    is already there (so a study started with one worker resumes with several, and the other
    way round), else SQLite for one process and a journal file for more. With both there,
    the one for ``n_workers``, with a warning naming the other.

    ``claim``: for the command about to open it. With neither file there, the choice is
    made under a lock on the folder and its file created empty at once (SQLite and optuna's
    journal both take an empty file as a new one), so that two commands started together
    with other ``--workers`` share one study instead of making one each: the second finds
    the first's file. Claim only once the arguments are checked, or a refused command leaves
    an empty file behind. Only a claim says which file it took and why (a log line, the
    warning above): without, the answer is a preview (what a command prints beforehand)."""
    if claim and not (Path(DEFAULT_SQLITE).is_file() or Path(DEFAULT_JOURNAL).is_file()):
        with _folder_locked(Path.cwd()):
            made = [n for n in (DEFAULT_SQLITE, DEFAULT_JOURNAL) if Path(n).is_file()]
            if made:
                _logger.warning(
                    "%s appeared in this folder as this command started (another tune "
                    "command?): this one joins its study",
                    made[0],
                )
            else:
                Path(DEFAULT_JOURNAL if n_workers > 1 else DEFAULT_SQLITE).touch()
    sqlite = f"sqlite:///{Path(DEFAULT_SQLITE).resolve()}"
    journal = f"journal://{Path(DEFAULT_JOURNAL).resolve()}"
    has_sqlite, has_journal = Path(DEFAULT_SQLITE).is_file(), Path(DEFAULT_JOURNAL).is_file()
    if has_sqlite != has_journal:
        url = sqlite if has_sqlite else journal
        if claim and (url == journal) != (n_workers > 1):
            name = DEFAULT_SQLITE if has_sqlite else DEFAULT_JOURNAL
            _logger.info("using the %s already in this folder", name)
        return url
    url = journal if n_workers > 1 else sqlite
    if claim and has_sqlite:  # both are here
        other = DEFAULT_SQLITE if n_workers > 1 else DEFAULT_JOURNAL
        warnings.warn(
            f"both {DEFAULT_SQLITE} and {DEFAULT_JOURNAL} are in this folder; using "
            f"{DEFAULT_JOURNAL if n_workers > 1 else DEFAULT_SQLITE} (the default for "
            f"{n_workers} worker{'s' if n_workers > 1 else ''}): pass --storage {other} to "
            "use the other",
            UserWarning,
            stacklevel=2,
        )
    return url


def normalize_url(storage: str | os.PathLike[str]) -> str:
    """Spell a storage the way :func:`open_storage` and ``optuna-dashboard`` read it.

    A bare path (a ``str`` or an :class:`os.PathLike`) becomes ``sqlite:///abs.db`` or
    ``journal:///abs.log`` by its suffix, and ``postgresql://`` picks the installed driver
    (psycopg 3 before psycopg2).

    Raises:
        ValueError: If the storage is empty, its kind cannot be told from its spelling, or it
            is a misspelt URL (``sqlite:/x.db``, ``sqlite://x.db``, ``postgres://``): the
            message gives the spelling to write.
    """
    from_path = isinstance(storage, os.PathLike)
    storage = os.fspath(storage).strip()
    if not storage:
        raise ValueError("storage must be a URL or a file path, but got an empty string")
    if "://" not in storage:
        _check_not_url(storage, from_path)
        path = Path(storage).expanduser().resolve()
        if path.suffix.lower() in _SQLITE_SUFFIXES:
            return f"sqlite:///{path}"
        if path.suffix.lower() in _JOURNAL_SUFFIXES:
            return f"journal://{path}"  # journal:///abs/path.log
        raise ValueError(
            f"cannot tell the kind of storage {storage!r}: pass a URL (sqlite:///study.db, "
            "journal:///study.log, postgresql://user@host/db) or a path ending in .db "
            "(SQLite) or .log (journal file)"
        )
    scheme, rest = storage.split("://", 1)
    scheme = scheme.lower()
    if scheme.split("+", 1)[0] == "postgres":
        right = redact(f"postgresql{scheme[len('postgres') :]}://{rest}")
        raise ValueError(
            f"storage {redact(storage)!r} has the scheme {scheme + '://'!r}, which SQLAlchemy "
            f"does not know: write postgresql:// ({right})"
        )
    if scheme.startswith("sqlite") and rest and not rest.startswith("/"):
        raise ValueError(
            f"storage {storage!r} is not a SQLite URL: after sqlite:// comes a third slash, "
            f"then the path: write sqlite:///{rest} for the relative path {rest!r}, or "
            "sqlite:////abs/path.db for an absolute one"
        )
    if (
        scheme == "postgresql"
        and importlib.util.find_spec("psycopg2") is None
        and importlib.util.find_spec("psycopg") is not None
    ):
        return "postgresql+psycopg://" + rest
    return storage


# "sqlite:/tmp/x.db" has no "://" and would be a relative path named "sqlite:"...
_URL_LIKE = re.compile(r"(?i)(sqlite|journal|postgres|postgresql|mysql)(\+\w+)?:(.*)")


def _check_not_url(storage: str, from_path: bool) -> None:
    """Refuse a URL with too few slashes: it would be a path under a folder named ``sqlite:``."""
    match = _URL_LIKE.fullmatch(storage)
    if match is None:
        return
    scheme, path = match.group(1).lower(), match.group(3)
    if scheme == "sqlite":
        # sqlalchemy: sqlite:/// then the path, so an absolute path makes four slashes
        right, rule = f"sqlite:///{path}", "sqlite:///relative.db or sqlite:////abs/path.db"
    elif scheme == "journal":
        right = f"journal://{path}" if path.startswith("/") else path or "journal:///a.log"
        rule = "journal:///abs/path.log or a bare path ending in .log"
    else:
        scheme = "postgresql" if scheme == "postgres" else scheme
        right, rule = f"{scheme}://{path.lstrip('/')}", f"{scheme}://user@host/db"
    shown = storage if scheme in ("sqlite", "journal") else f"{match.group(1)}:..."  # password
    note = " (a Path merges the slashes of a URL: pass a URL as a str)" if from_path else ""
    raise ValueError(
        f"storage {shown!r} is a URL with too few slashes{note}: write {redact(right)} ({rule})"
    )


def _journal_path(url: str) -> Path:
    path = url.split("://", 1)[1]
    if not path:
        raise ValueError(f"journal storage {url!r} names no file; pass journal:///path/file.log")
    return Path(path)


def open_storage(
    storage: str | os.PathLike[str],
    *,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
    create: bool = True,
) -> BaseStorage:
    """Open (creating if needed) the optuna storage that ``storage`` names.

    Args:
        storage:
            A URL or a path (``str`` or :class:`os.PathLike`), as in the module's table.
        heartbeat_interval:
            Seconds between heartbeats of running trials in an RDB storage; a trial whose
            heartbeat is older than ``4 * heartbeat_interval`` is failed and re-queued (at most
            twice). ``None`` turns the heartbeat off.
        create:
            Create the database tables if missing (``False`` to only read a study that exists).

    Raises:
        ValueError: For an unreadable spelling, a missing database driver (with the package
            to install), a database that cannot be reached, or an existing file that is not an
            optuna journal (a training log, say; it is left as it was).
    """
    url = normalize_url(storage)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "journal":
        path = _journal_path(url)
        _check_journal(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(_WholeRecordJournal(str(path)))
    sqlite_file = _sqlite_path(url) if scheme.startswith("sqlite") else None
    if sqlite_file is not None:
        if create:
            _check_sqlite(sqlite_file)
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval is not None:
        with quiet_experimental():
            retry = RetryHeartbeatStaleTrialCallback(max_retry=_MAX_RETRY)
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": 4 * heartbeat_interval,
            "heartbeat_stale_trial_callback": retry,
        }
    try:
        return _rdb_storage(url, heartbeat, create=create)
    except ImportError as exc:
        # optuna raises a generic ImportError from the driver's ModuleNotFoundError
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
        name = getattr(missing, "name", None) or "its database driver"
        advice = {
            "postgresql": "pip install 'psycopg[binary]' (or 'autowarm[postgres]')",
            "mysql": "pip install PyMySQL, and write the URL as mysql+pymysql://...",
        }
        todo = next((v for k, v in advice.items() if scheme.startswith(k)), f"install {name}")
        raise ValueError(
            f"storage {redact(url)} needs the database driver {name!r}, which is not "
            f"installed: {todo}"
        ) from exc
    except Exception as exc:  # sqlalchemy's and optuna's: unreachable server, bad credentials
        if not type(exc).__module__.startswith(("sqlalchemy", "optuna")):
            raise
        cause = exc.__cause__ or exc
        if not create and _is_table_race(exc):
            raise ValueError(
                f"cannot open storage {redact(url)}: it has no optuna tables ({cause}); it is "
                "not a study's storage, or the worker creating it has not finished: pass the "
                "storage that `autowarm tune` wrote, or wait a few seconds and run this again"
            ) from exc
        raise ValueError(f"cannot open storage {redact(url)}: {cause}") from exc


# What a process sees when another one is creating the same database's tables at this moment:
# both create a table, both stamp the schema version, or a reader looks before the tables exist.
# (SQLite, PostgreSQL and MySQL spellings.)
_TABLE_RACE = (
    "already exists",
    "unique constraint failed",
    "duplicate key value",
    "duplicate entry",
    "no such table",
    "does not exist",
    "doesn't exist",
    "database is locked",
)
_RACE_ATTEMPTS = 7


def _is_table_race(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    return type(exc).__module__.startswith(("sqlalchemy", "optuna")) and any(
        sign in text for sign in _TABLE_RACE
    )


class _WholeRecordJournal(JournalFileBackend):
    """optuna's journal file, whose records are never left cut short.

    A write that fails part-way (a full disk) leaves half a record at the end of the file.
    optuna reads past it (an unterminated last line is skipped), but its next append lands on
    it, and the merged line makes the whole journal unreadable: every finished trial lost to
    ``tune``, ``export`` and ``report``. Here each append, under the journal's lock, first
    drops a cut-short record at the end (one a failed write of any process left), and a
    failed write takes back its own record cut short (never a whole one: another process may
    have read it already).
    """

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
        self._lock.acquire()
        try:
            _drop_cut_record(Path(self._file_path))
            try:
                with open(self._file_path, "ab") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    _drop_cut_record(Path(self._file_path), quiet=True)
                raise
        finally:
            self._lock.release()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """optuna's records from ``log_number_from`` on; a damaged line (one that is not a
        whole JSON record, followed by others) is a :class:`ValueError` naming the file, the
        line and what can be kept (optuna's own says only "Extra data: line 1 column 144")."""
        line = log_number_from  # records read so far: the damaged line is the next one
        try:
            for log in super().read_logs(log_number_from):
                line += 1
                yield log
        except ValueError as exc:  # json.JSONDecodeError, or optuna's "Invalid log format."
            raise ValueError(_damaged_message(Path(self._file_path), line + 1, exc)) from exc


def _damaged_message(path: Path, line: int, exc: Exception) -> str:
    what = (
        f"the journal file {path} is damaged at line {line}, which is not a whole optuna "
        f"record ({exc}): a write cut short (a full disk, a crash), two programs writing it "
        "at once, or an edit."
    )
    if line == 1:
        return f"{what} No record before it can be kept: start the study in a new file"
    return (
        f"{what} The lines before it are a consistent study: keep a copy, then keep its first "
        f"{line - 1} line(s) (head -n {line - 1} {shlex.quote(str(path))} > fixed.log) and "
        f"pass that file as the storage; the records after line {line - 1} are lost"
    )


def _drop_cut_record(path: Path, *, quiet: bool = False) -> None:
    # Truncate the file after its last newline; the caller holds the journal's lock, so no
    # other process is writing the end of it.
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        keep, pos = 0, end
        while pos > 0:
            step = min(pos, 1 << 16)
            pos -= step
            handle.seek(pos)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = pos + newline + 1
                break
    if not quiet:
        _logger.warning(
            "the study's journal %s ended in a record cut short (%d bytes, left by a write that "
            "failed: a full disk, or a crash): dropped before writing on, so that the journal "
            "stays readable",
            path,
            end - keep,
        )
    os.truncate(path, keep)


@contextlib.contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    # An exclusive flock on the folder itself (no lock file left behind); where the folder
    # cannot be opened or locked (a file system without flock), the block runs unlocked.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_journal(path: Path) -> None:
    """Refuse an existing file that is not an optuna journal, before optuna appends to it.

    optuna reads a journal line by line as JSON and writes its first entry before it reads
    back, so a training log passed as ``run.log`` would gain a line and then fail with
    ``Expecting value: line 1 column 1``.
    """
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except FileNotFoundError:
        return
    if not first:
        return  # an empty file: a new journal
    if first.endswith(b"\n"):
        try:
            entry = json.loads(first)
        except ValueError as exc:
            if first.startswith(b'{"op_code":'):  # a journal's first record, damaged
                raise ValueError(_damaged_message(path, 1, exc)) from exc
            entry = None
        ok = isinstance(entry, dict) and "op_code" in entry
    else:
        ok = first.startswith(b"{")  # the first entry, being written by another process now
    if not ok:
        raise ValueError(
            f"{str(path)!r} is not an optuna journal file (its first line is "
            f"{first[:80].decode('utf-8', 'replace').rstrip()!r}); it was left unchanged: pass "
            "the journal file that `autowarm tune` wrote, or a new file name"
        )


def _rdb_storage(url: str, heartbeat: dict[str, Any], *, create: bool) -> RDBStorage:
    """``RDBStorage(url)``, retried while another process creates the same tables.

    Opening a fresh database writes to it even for a reader (optuna stamps the schema version),
    so two workers, or ``autowarm report`` beside ``autowarm tune``, that open a new file at the
    same moment collide; the loser waits and opens what the winner made (for up to ~3 s).
    """
    engine = _engine_kwargs(url)
    for attempt in range(_RACE_ATTEMPTS):
        try:
            with quiet_experimental():
                return RDBStorage(
                    url, engine_kwargs=dict(engine), skip_table_creation=not create, **heartbeat
                )
        except Exception as exc:
            if not _is_table_race(exc) or attempt == _RACE_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


SQLITE_BUSY_TIMEOUT = 60.0
"""Seconds a SQLite write waits for another process's lock (workers, a report reading)
before "database is locked"; sqlite3's own default is 5."""


def _engine_kwargs(url: str) -> dict[str, Any]:
    # PostgreSQL: a connection idle through a long trial may have been closed by the server
    # or a proxy, and the trial's result would fail to write; a ping before each use finds
    # it (optuna does this for MySQL only). SQLite: a longer wait for the file's lock.
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("postgresql"):
        return {"pool_pre_ping": True}
    if scheme.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    return {}


# Tables of an optuna RDB storage, any of which marks a database as a study's (one process
# may be creating them while another looks).
_OPTUNA_TABLES = frozenset({"studies", "trials", "alembic_version", "version_info"})


def _check_sqlite(path: Path) -> None:
    """Refuse a SQLite database of something else before optuna adds its tables to it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    import sqlite3

    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
    except sqlite3.DatabaseError as exc:
        raise ValueError(
            f"{path} is not a SQLite database ({exc}); it was left unchanged: pass a new file "
            "(or an existing study's .db) as the storage"
        ) from None
    if tables and not tables & _OPTUNA_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ValueError(
            f"{path} is a SQLite database of something else (tables: {shown}), not an optuna "
            "study's storage; it was left unchanged: pass a new file (or an existing study's "
            ".db) as the storage"
        )


def _sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (``None`` for an in-memory database); a
    query (``?timeout=60``) is SQLAlchemy's, not part of the file's name."""
    path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def url_of(study: optuna.Study) -> str | None:
    """Where ``study`` is stored, spelt as ``--storage`` and ``optuna-dashboard`` take it
    (a password hidden: :func:`redact`); ``None`` for storage that no URL names (memory)."""
    storage = getattr(study, "_storage", None)
    if isinstance(storage, JournalStorage):
        path = getattr(getattr(storage, "_backend", None), "_file_path", None)
        return f"journal://{Path(path).resolve()}" if path else None
    inner = getattr(storage, "_backend", None)  # optuna caches an RDB storage
    if isinstance(inner, RDBStorage):
        storage = inner
    if isinstance(storage, RDBStorage):
        url = str(storage.url)
        if not url.lower().startswith("sqlite"):
            return redact(url)
        db = _sqlite_path(url)
        if db is None:  # in memory: gone with the process
            return None
        # the reader's folder may be another; a "file:" URI (uri=true) is left as written
        if not db.is_absolute() and "uri=true" not in url.lower():
            head, tail = url.split(":///", 1)
            _, sep, query = tail.partition("?")
            url = f"{head}:///{db.resolve()}{sep}{query}"
        return url
    return None


# A URL's user and password as SQLAlchemy reads them: a user without ":" or "/", then a
# password up to the first "@" ("?" and "/" included)
_CREDENTIALS = re.compile(r"^(?P<head>[\w+]+://[^:/@]*:)(?P<password>[^@]*)@")


def redact(url: str) -> str:
    """The URL with its password hidden (``***``), for messages and logs: the one after the
    user name (``postgresql://user:***@host/db``) and a ``password=`` query parameter."""
    match = _CREDENTIALS.match(url)
    head, rest = (f"{match['head']}***@", url[match.end() :]) if match else ("", url)
    base, sep, query = rest.partition("?")
    if query:
        params = [p.partition("=") for p in query.split("&")]
        query = "&".join(
            f"{k}=***" if eq and k.lower() == "password" else f"{k}{eq}{v}" for k, eq, v in params
        )
    return f"{head}{base}{sep}{query}"


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Silence optuna's ExperimentalWarning (heartbeat options, TPE's multivariate mode)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _lock_path(url: str) -> Path | None:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "journal":
        return _journal_path(url).with_name(_journal_path(url).name + ".autowarm-lock")
    if scheme.startswith("sqlite"):
        db = _sqlite_path(url)
        return None if db is None else db.with_name(db.name + ".autowarm-lock")
    return None


@contextlib.contextmanager
def setup_lock(storage: str | os.PathLike[str], study_name: str) -> Iterator[None]:
    """Hold a lock while a study is set up, so two starters do not both probe and enqueue.

    Files (SQLite, journal) use an ``flock`` on a file beside them; PostgreSQL an advisory
    lock keyed by the study name. Other storages are not locked: start one worker first.
    """
    url = normalize_url(storage)
    lock_file = _lock_path(url)
    if lock_file is not None:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if url.split("://", 1)[0].lower().startswith("postgresql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    yield


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_namespace() -> str:
    """The inode of this process's PID namespace (``4026531836``), or ``""`` if unreadable."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    match = re.fullmatch(r"pid:\[(\d+)\]", link)
    return match.group(1) if match else ""


def worker_id() -> str:
    """``host:pid:start:pidns`` of this process, recorded on every trial it runs.

    ``pidns`` (the PID namespace's inode, empty where unreadable) tells apart two processes
    with the same host name and pid in different containers (``--network host`` shares the
    host name, not the pids). Earlier versions wrote ``host:pid:start``.
    """
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}:{_pid_namespace()}"


def _parse_worker(worker: str) -> tuple[str, int, str, str | None] | None:
    """``(host, pid, start, pidns)`` of a worker id; ``pidns`` is ``None`` in an old id."""
    parts = worker.rsplit(":", 3)
    if len(parts) == 4 and parts[1].isdigit() and all(p == "" or p.isdigit() for p in parts[2:]):
        return parts[0], int(parts[1]), parts[2], parts[3]
    parts = worker.rsplit(":", 2)  # host:pid:start, written before the namespace was
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2], None
    return None


def _is_dead_here(worker: str) -> bool:
    """Whether ``worker`` (from :func:`worker_id`) names a process of this host that is gone.

    Only a worker of the same host and the same PID namespace can be checked; one whose
    namespace is unknown (on its side or here) counts as alive. An old id without the
    namespace is judged by its host alone.
    """
    parsed = _parse_worker(worker)
    if parsed is None or parsed[1] <= 0:
        return False
    host, pid, start, namespace = parsed
    if host != socket.gethostname():
        return False
    if namespace is not None and (not namespace or namespace != _pid_namespace()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return bool(start) and _start_time(pid) != start


def _has_heartbeat(storage: BaseStorage) -> bool:
    return bool(getattr(storage, "get_heartbeat_interval", lambda: None)())


def _silence(trial: FrozenTrial, storage: BaseStorage, now: float) -> float | None:
    """Seconds since a running trial of a storage without heartbeat last gave a sign of life
    (its liveness stamp, else its start), when that is longer than 4 heartbeat intervals;
    ``None`` otherwise, and on storages whose heartbeat optuna checks itself."""
    if _has_heartbeat(storage):
        return None
    stamp = trial.user_attrs.get(_attrs.ALIVE)
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        last = float(stamp)
    elif trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    else:
        return None
    silent = now - last
    return silent if silent > 4 * HEARTBEAT_INTERVAL else None


@contextlib.contextmanager
def keep_alive(study: optuna.Study, trial_id: int, *, heartbeat: bool) -> Iterator[None]:
    """Show that a running trial's worker is alive while the block runs, so that a process
    anywhere can tell a trial whose worker died (on another host, in a restarted container)
    from one still running.

    Storages without a heartbeat (journal files): the trial's ``autowarm.alive`` attribute
    gets the time every :data:`HEARTBEAT_INTERVAL` seconds; :func:`fail_dead_trials` fails a
    trial silent for 4 intervals (clocks of the hosts sharing a journal must agree to within
    a minute or so, as NTP keeps them). RDB storages: optuna's own heartbeat, recorded here
    when ``heartbeat`` (trials asked and told by hand; ``study.optimize`` beats itself).
    """
    storage = study._storage
    if _has_heartbeat(storage):
        if not heartbeat:
            yield
            return
        interval = float(storage.get_heartbeat_interval())  # type: ignore[attr-defined]

        def beat() -> None:
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]

    else:
        interval = float(HEARTBEAT_INTERVAL)

        def beat() -> None:
            storage.set_trial_user_attr(trial_id, _attrs.ALIVE, time.time())

    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                beat()
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # failed by another process (a stamp that came too late): stop
            except Exception as exc:  # a lost connection, a full disk: the run goes on
                _logger.warning("liveness of trial id %d not recorded: %s", trial_id, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, name="autowarm-keep-alive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_dead_trials(study: optuna.Study, *, requeue_them: bool = True) -> list[int]:
    """Fail and re-queue running trials whose worker is gone.

    A worker killed by SIGKILL (or on a host that went down) cannot mark its trial. This
    finds such trials: by the ``autowarm.worker`` attribute, a process of this host that no
    longer exists; on a storage without heartbeat, a trial whose liveness stamp
    (:func:`keep_alive`) is older than 4 heartbeat intervals, whatever host ran it. It marks
    them failed with the reason and enqueues the same parameters again, as optuna's
    heartbeat does for RDB storages.

    Returns:
        The numbers of the trials it failed.
    """
    failed = []
    storage = study._storage
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(_attrs.WORKER)
        if isinstance(worker, str) and _is_dead_here(worker):
            reason = f"its worker process {worker} died"
        elif (silent := _silence(trial, storage, now)) is not None:
            reason = (
                f"its worker {worker or '(unknown)'} gave no sign of life for {silent:.0f} s "
                "(its process or host is gone)"
            )
        else:
            continue
        deaths = _worker_deaths(study, trial)
        again = requeue_them and deaths < _MAX_RETRY
        if again:
            reason += "; re-queued"
        elif requeue_them:
            # a schedule that kills its worker (a segfault, the out-of-memory killer) would
            # otherwise run first on every resume, for ever
            reason += f"; {NOT_QUEUED_AGAIN}: the worker of each of its {deaths + 1} runs died"
        else:
            reason += "; claimed anew by the next run"
        try:
            storage.set_trial_user_attr(trial._trial_id, _attrs.REASON, reason)
            storage.set_trial_user_attr(trial._trial_id, _attrs.WORKER_DIED, deaths + 1)
            if requeue_them and not again:
                storage.set_trial_user_attr(trial._trial_id, _attrs.GIVEN_UP, True)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker here failed (and re-queued) it since the list was read
        if again:
            requeue(study, trial)
        failed.append(trial.number)
        _logger.warning("%s: %s; marked failed", _run_name(study, trial), reason)
    return failed


def _run_name(study: optuna.Study, trial: FrozenTrial) -> str:
    # a confirmation run lives in the "<name>.confirm" companion study: its number is not
    # the number of a trial of the study the user knows
    confirms = trial.user_attrs.get(_attrs.CONFIRMS)
    if is_int(confirms):
        return f"confirmation run {trial.number} of trial {confirms} (study {study.study_name!r})"
    return f"trial {trial.number}"


def _worker_deaths(study: optuna.Study, trial: FrozenTrial) -> int:
    """How many of the runs ``trial`` re-runs (its ``retry_of`` chain) ended with their worker
    gone."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    deaths, seen = 0, {trial.number}
    earlier = trial.user_attrs.get(_attrs.RETRY_OF)
    while isinstance(earlier, int) and earlier in by_number and earlier not in seen:
        seen.add(earlier)
        before = by_number[earlier]
        if worker_died(before):
            deaths += 1
        earlier = before.user_attrs.get(_attrs.RETRY_OF)
    return deaths


def worker_died(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was failed because its worker was gone (:func:`fail_dead_trials`)."""
    if _attrs.WORKER_DIED in trial.user_attrs:
        return True
    # a study from before the attribute: the reason fail_dead_trials wrote
    return str(trial.user_attrs.get(_attrs.REASON, "")).startswith("its worker")


def given_up(trial: FrozenTrial) -> bool:
    """Whether ``trial``'s worker died on each of its runs, so it is not queued again."""
    return trial.user_attrs.get(_attrs.GIVEN_UP) is True or NOT_QUEUED_AGAIN in str(
        trial.user_attrs.get(_attrs.REASON, "")
    )


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue ``trial``'s parameters and autowarm attributes again (a retry)."""
    own = (_attrs.REASON, _attrs.WORKER, _attrs.ALIVE, _attrs.WORKER_DIED, _attrs.GIVEN_UP)
    keep = {k: v for k, v in trial.user_attrs.items() if k not in own}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={**keep, _attrs.RETRY_OF: trial.number},
        )
    )


def load_study(storage: str | os.PathLike[str], study_name: str | None) -> optuna.Study:
    """Load an existing study, with errors that list what the storage holds.

    Args:
        storage: a URL or path as for :func:`open_storage` (it must exist already).
        study_name: the study; may be ``None`` when the storage holds exactly one.

    Raises:
        ValueError: If the storage file does not exist, the study is not there (the message
            lists the studies), or no name is given and there is not exactly one study.
    """
    url = normalize_url(storage)
    scheme = url.split("://", 1)[0].lower()
    path = (
        _journal_path(url)
        if scheme == "journal"
        else _sqlite_path(url)
        if scheme.startswith("sqlite")
        else None
    )
    if path is not None and not path.exists():
        raise ValueError(f"storage file {str(path)!r} does not exist; check --storage")
    opened = open_storage(url, heartbeat_interval=None, create=False)
    every = [s.study_name for s in optuna.get_all_study_summaries(opened, False)]
    # a study's full-length confirmations live in "<name>.confirm": not a study of its own
    names = [n for n in every if not (n.endswith(".confirm") and n[: -len(".confirm")] in every)]
    if study_name is None:
        if len(names) != 1:
            raise ValueError(
                f"{redact(url)} holds {len(names)} studies {names}; pass --study-name"
            )
        study_name = names[0]
    if study_name not in every:
        raise ValueError(
            f"no study {study_name!r} in {redact(url)}; the studies there: {names or 'none'}"
        )
    with quiet_experimental():
        return optuna.load_study(study_name=study_name, storage=opened)
