"""Study storages: spellings of a storage, journal files, worker liveness across namespaces."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import autowarm
from autowarm.study import _attrs, _storage
from autowarm.study._task import Task, load_task

HERE = Path(__file__).parent
SPEC = f"{HERE / 'tiny_task.py'}:task"


# ---------------------------------------------------------------------------- worker liveness
def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) just now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _own_namespace() -> str:
    return _storage.worker_id().rsplit(":", 1)[1]


def test_worker_id_names_host_pid_start_and_pid_namespace() -> None:
    host, pid, start, namespace = _storage.worker_id().rsplit(":", 3)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert start.isdigit()
    assert namespace == os.readlink("/proc/self/ns/pid")[len("pid:[") : -1]
    assert not _storage._is_dead_here(_storage.worker_id())


def test_a_worker_of_another_pid_namespace_is_not_judged_dead() -> None:
    # Two containers with --network host share the host name; a pid of the other one means
    # nothing here, so its trial must not be failed (its worker then crashed on "Cannot tell
    # a FAIL trial").
    host = socket.gethostname()
    dead = _dead_pid()
    other = str(int(_own_namespace()) + 1)
    assert not _storage._is_dead_here(f"{host}:{dead}:123:{other}")
    assert not _storage._is_dead_here(f"{host}:{os.getpid()}:1:{other}")  # "reused" pid
    assert _storage._is_dead_here(f"{host}:{dead}:123:{_own_namespace()}")
    assert _storage._is_dead_here(f"{host}:{os.getpid()}:1:{_own_namespace()}")  # reused pid
    assert not _storage._is_dead_here(f"other-{host}:{dead}:123:{_own_namespace()}")


def test_an_unknown_pid_namespace_counts_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    host, dead = socket.gethostname(), _dead_pid()
    assert not _storage._is_dead_here(f"{host}:{dead}:123:")  # unreadable on its side
    own = _own_namespace()
    monkeypatch.setattr(_storage, "_pid_namespace", lambda: "")  # unreadable here
    assert not _storage._is_dead_here(f"{host}:{dead}:123:{own}")
    assert not _storage._is_dead_here(f"{host}:{dead}:123:")


def test_old_worker_ids_are_judged_by_host_as_before() -> None:
    # host:pid:start, written by earlier versions into studies that still exist
    host, dead = socket.gethostname(), _dead_pid()
    assert _storage._is_dead_here(f"{host}:{dead}:123")
    assert _storage._is_dead_here(f"{host}:{dead}:")
    assert not _storage._is_dead_here(f"{host}:{os.getpid()}:{_storage._start_time(os.getpid())}")
    assert _storage._is_dead_here(f"{host}:{os.getpid()}:1")  # pid reused by another process
    assert not _storage._is_dead_here(f"other-{host}:{dead}:123")
    assert not _storage._is_dead_here("no-pid-here")
    assert not _storage._is_dead_here(f"{host}:0:")


def test_only_trials_of_dead_workers_here_are_failed() -> None:
    study = optuna.create_study()
    host, dead, own = socket.gethostname(), _dead_pid(), _own_namespace()
    workers = {
        "elsewhere": f"{host}:{dead}:123:{int(own) + 1}",
        "dead": f"{host}:{dead}:123:{own}",
        "old": f"{host}:{dead}:123",
        "alive": _storage.worker_id(),
    }
    numbers = {}
    for name, worker in workers.items():
        trial = study.ask()
        trial.set_user_attr(_attrs.WORKER, worker)
        numbers[name] = trial.number
    failed = _storage.fail_dead_trials(study, requeue_them=False)
    assert failed == [numbers["dead"], numbers["old"]]
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert [t.number for t in running] == [numbers["elsewhere"], numbers["alive"]]


def test_two_workers_failing_the_same_dead_trial_do_not_crash() -> None:
    # Worker B reads the running trials just before worker A fails the dead one: B's update
    # of a finished trial used to raise UpdateFinishedTrialError and end B with a traceback.
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr(
        _attrs.WORKER, f"{socket.gethostname()}:{_dead_pid()}:123:{_own_namespace()}"
    )
    read_by_b = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert _storage.fail_dead_trials(study) == [trial.number]

    class Late:  # the study as worker B saw it a moment earlier
        _storage = study._storage

        def get_trials(self, **kwargs: Any) -> list[Any]:
            return read_by_b

    assert _storage.fail_dead_trials(Late()) == []  # type: ignore[arg-type]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # failed and re-queued once


# ---------------------------------------------------------------------------- path objects
def test_the_default_storage_is_the_one_already_in_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sqlite = f"sqlite:///{tmp_path / _storage.DEFAULT_SQLITE}"
    journal = f"journal://{tmp_path / _storage.DEFAULT_JOURNAL}"
    assert _storage.default_storage_url(1) == sqlite  # none yet: by the number of workers
    assert _storage.default_storage_url(4) == journal
    (tmp_path / _storage.DEFAULT_JOURNAL).write_text("")
    assert _storage.default_storage_url(1) == journal  # started with several, resumed with one
    (tmp_path / _storage.DEFAULT_JOURNAL).unlink()
    (tmp_path / _storage.DEFAULT_SQLITE).write_bytes(b"")
    assert _storage.default_storage_url(4) == sqlite
    (tmp_path / _storage.DEFAULT_JOURNAL).write_text("")
    with pytest.warns(UserWarning, match=r"both autowarm\.db and .*--storage autowarm\.db"):
        assert _storage.default_storage_url(4, claim=True) == journal
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a preview (the CLI's, before tune) says nothing
        assert _storage.default_storage_url(4) == journal


def test_claiming_the_default_storage_makes_its_file_and_a_later_command_joins_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sqlite = f"sqlite:///{tmp_path / _storage.DEFAULT_SQLITE}"
    assert _storage.default_storage_url(1, claim=True) == sqlite
    assert (tmp_path / _storage.DEFAULT_SQLITE).read_bytes() == b""  # a new database to SQLite
    # a second command with other --workers takes the same file (it made a journal of its own)
    assert _storage.default_storage_url(4, claim=True) == sqlite
    assert sorted(p.name for p in tmp_path.iterdir()) == [_storage.DEFAULT_SQLITE]
    optuna.create_study(storage=_storage.open_storage(sqlite, heartbeat_interval=None))


def test_a_command_that_loses_the_race_for_the_default_storage_joins_the_winners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    locked = _storage._folder_locked

    @contextlib.contextmanager
    def other_command_first(folder: Path) -> Iterator[None]:
        # the other command (one worker) made its file between this one's look and its lock
        (folder / _storage.DEFAULT_SQLITE).touch()
        with locked(folder):
            yield

    monkeypatch.setattr(_storage, "_folder_locked", other_command_first)
    with caplog.at_level("WARNING", logger="autowarm"):
        url = _storage.default_storage_url(4, claim=True)
    assert url == f"sqlite:///{tmp_path / _storage.DEFAULT_SQLITE}"
    assert not (tmp_path / _storage.DEFAULT_JOURNAL).exists()
    assert "autowarm.db appeared in this folder as this command started" in caplog.text


def test_a_refused_tune_leaves_no_default_storage_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autowarm.cli import main

    monkeypatch.chdir(tmp_path)
    task = load_task(SPEC)
    with pytest.raises(ValueError, match="n_trials must be a positive int"):
        autowarm.tune(task, n_trials=0)
    assert main(["tune", SPEC, "--n-trials", "2", "--trial-steps", "1"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_storage_functions_take_path_objects(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    assert _storage.normalize_url(db) == f"sqlite:///{db}"
    optuna.create_study(storage=_storage.open_storage(db, heartbeat_interval=None), study_name="s")
    with _storage.setup_lock(db, "s"):
        assert _storage.load_study(db, "s").study_name == "s"


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(SPEC)


def test_tune_takes_a_path_as_storage(
    tmp_path: Path, task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = autowarm.tune(
        task, n_trials=1, storage=Path("s.db"), trial_steps=20, confirm=0, progress=False
    )
    assert result.storage == f"sqlite:///{tmp_path / 's.db'}"


# ---------------------------------------------------------------------------- spellings
@pytest.mark.parametrize(
    ("storage", "hint"),
    [
        ("sqlite:/tmp/x.db", "write sqlite:////tmp/x.db"),
        ("sqlite:x.db", "write sqlite:///x.db"),
        ("SQLITE:/tmp/x.db", "write sqlite:////tmp/x.db"),
        ("journal:/tmp/x.log", "write journal:///tmp/x.log"),
        ("postgresql:/user:pw@host/db", r"write postgresql://user:\*\*\*@host/db"),
    ],
)
def test_a_url_with_one_slash_is_an_error_not_a_folder(
    storage: str, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"too few slashes: {hint}") as raised:
        _storage.normalize_url(storage)
    assert "pw" not in str(raised.value)
    with pytest.raises(ValueError, match="too few slashes"):
        _storage.open_storage(storage, heartbeat_interval=None)
    assert list(tmp_path.iterdir()) == []  # no ./sqlite:/tmp/x.db


def test_a_missing_database_driver_is_named_with_what_to_install() -> None:
    # optuna wraps the driver's ModuleNotFoundError in a generic ImportError.
    pytest.importorskip("sqlalchemy")
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed")
    with pytest.raises(ValueError, match=r"driver 'MySQLdb', which is not installed: pip install"):
        _storage.open_storage("mysql://u@localhost/db", heartbeat_interval=None)


def test_a_path_object_that_merged_a_url_says_so() -> None:
    with pytest.raises(ValueError, match="a Path merges the slashes of a URL"):
        _storage.normalize_url(Path("sqlite:///x.db"))


def test_sqlite_with_two_slashes_names_the_spellings() -> None:
    with pytest.raises(
        ValueError, match=r"write sqlite:///x\.db for the relative path 'x\.db', or sqlite:////"
    ):
        _storage.open_storage("sqlite://x.db", heartbeat_interval=None)
    assert _storage.normalize_url("sqlite://") == "sqlite://"  # in memory, as sqlalchemy reads it


def test_postgres_scheme_says_to_write_postgresql() -> None:
    with pytest.raises(ValueError, match=r"write postgresql:// \(postgresql://u:\*\*\*@h/db\)"):
        _storage.open_storage("postgres://u:secret@h/db", heartbeat_interval=None)
    with pytest.raises(ValueError, match=r"\(postgresql\+psycopg2://u@h/db\)"):
        _storage.normalize_url("postgres+psycopg2://u@h/db")


def test_a_database_of_something_else_is_named_and_left_alone(tmp_path: Path) -> None:
    import sqlite3

    app = tmp_path / "app.db"
    with sqlite3.connect(app) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.close()
    before = app.read_bytes()
    with pytest.raises(ValueError, match=r"app\.db is a SQLite database of something else "):
        _storage.open_storage(str(app), heartbeat_interval=None)
    assert app.read_bytes() == before  # optuna used to add its 13 tables to it
    text = tmp_path / "notes.db"
    text.write_text("not a database at all, but long enough to have a header" * 4)
    with pytest.raises(ValueError, match=r"notes\.db is not a SQLite database"):
        _storage.open_storage(str(text), heartbeat_interval=None)
    # a study's database, a new file and an empty one open
    study_db = tmp_path / "study.db"
    optuna.create_study(storage=_storage.open_storage(str(study_db)), study_name="s")
    _storage.open_storage(str(study_db))
    (tmp_path / "empty.db").touch()
    _storage.open_storage(str(tmp_path / "empty.db"))


def test_a_log_that_is_not_a_journal_is_named_and_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("epoch 1 loss 3.2\nepoch 2 loss 2.9\n")
    before = log.read_bytes()
    with pytest.raises(ValueError, match=r"train\.log' is not an optuna journal file"):
        _storage.open_storage(str(log), heartbeat_interval=None)
    with pytest.raises(ValueError, match="is not an optuna journal file"):
        _storage.load_study(str(log), None)
    assert log.read_bytes() == before
    # a journal (and an empty file) opens
    journal = tmp_path / "study.log"
    optuna.create_study(storage=_storage.open_storage(str(journal)), study_name="s")
    empty = tmp_path / "empty.log"
    empty.touch()
    _storage.open_storage(str(empty))
    assert _storage.load_study(str(journal), None).study_name == "s"


# ---------------------------------------------------------------------------- report sources
def test_report_of_a_study_file_says_to_pass_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autowarm.cli import main

    db = tmp_path / "s1.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="s")
    journal = tmp_path / "s1.log"
    optuna.create_study(storage=_storage.open_storage(str(journal)), study_name="s")
    for path, kind in ((db, "a SQLite database"), (journal, "an optuna journal file")):
        assert main(["report", str(path), "-o", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert f"{path} is {kind}" in err
        assert f"pass --storage {path} --study-name NAME" in err


# ------------------------------------------------------------------- liveness on journal files
_OTHER_HOST = "otherhost:12345:999:4026531836"  # a worker this host cannot check by its pid


def _journal_study(tmp_path: Path) -> optuna.Study:
    storage = _storage.open_storage(f"journal://{tmp_path / 'study.log'}")
    return optuna.create_study(storage=storage, study_name="s")


def test_a_trial_silent_on_a_journal_is_failed_whatever_host_ran_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker killed on another host (or in a restarted container) left its trial running
    # forever: it counted toward n_trials, and the wait before the confirmations never ended.
    import time

    study = _journal_study(tmp_path)
    numbers = {}
    for name, stamp in (("silent", time.time() - 1000.0), ("fresh", time.time()), ("new", None)):
        trial = study.ask()
        trial.set_user_attr(_attrs.WORKER, _OTHER_HOST)
        if stamp is not None:
            trial.set_user_attr(_attrs.ALIVE, stamp)
        numbers[name] = trial.number
    assert _storage.fail_dead_trials(study) == [numbers["silent"]]
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert "gave no sign of life for 1000 s" in failed[0].user_attrs[_attrs.REASON]
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs[_attrs.RETRY_OF] == numbers["silent"]
    assert _attrs.ALIVE not in queued.user_attrs and _attrs.WORKER not in queued.user_attrs
    later = time.time() + 4 * _storage.HEARTBEAT_INTERVAL + 5.0
    monkeypatch.setattr(_storage.time, "time", lambda: later)
    # 2 minutes on: the fresh stamp is stale, and so is a trial that never stamped since it began
    assert _storage.fail_dead_trials(study) == [numbers["fresh"], numbers["new"]]


def test_keep_alive_stamps_a_journal_trial_while_it_runs_and_then_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr(_storage, "HEARTBEAT_INTERVAL", 0.05)
    study = _journal_study(tmp_path)
    trial = study.ask()

    def stamp() -> float:
        return float(study.get_trials(deepcopy=False)[0].user_attrs[_attrs.ALIVE])

    with _storage.keep_alive(study, trial._trial_id, heartbeat=False):
        deadline = time.monotonic() + 5.0  # the thread's first stamp, on a busy machine too
        while _attrs.ALIVE not in study.get_trials(deepcopy=False)[0].user_attrs:
            assert time.monotonic() < deadline, "no stamp"
            time.sleep(0.01)
        first = stamp()
        time.sleep(0.3)
        assert stamp() > first
    last = stamp()
    time.sleep(0.2)
    assert stamp() == last  # no stamp after the block
    study.tell(trial, 1.0)


def test_rdb_storages_keep_optunas_heartbeat_and_get_no_stamp(tmp_path: Path) -> None:
    storage = _storage.open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    with pytest.warns(UserWarning, match="Heartbeat of storage"):
        trial = study.ask()  # asked by hand, as the confirmations are
    with _storage.keep_alive(study, trial._trial_id, heartbeat=False):
        pass
    assert _attrs.ALIVE not in study.get_trials()[0].user_attrs
    assert _storage.fail_dead_trials(study) == []  # optuna's heartbeat decides there


def test_a_schedule_whose_worker_dies_each_time_is_not_queued_for_ever() -> None:
    # A schedule that kills its worker (a segfault, the out-of-memory killer) was queued
    # again on every start, and ran first each time.
    study = optuna.create_study()
    dead = f"{socket.gethostname()}:{_dead_pid()}:123:{_own_namespace()}"
    reasons = []
    for _ in range(3):
        trial = study.ask()  # the queued copy, after the first
        trial.set_user_attr(_attrs.WORKER, dead)
        assert _storage.fail_dead_trials(study) == [trial.number]
        reasons.append(study.get_trials()[trial.number].user_attrs[_attrs.REASON])
    assert [r.endswith("; re-queued") for r in reasons] == [True, True, False]
    assert "not queued again: the worker of each of its 3 runs died" in reasons[-1]
    assert not study.get_trials(states=(TrialState.WAITING,))
    # recorded as attributes too, which the next start reads (not the reason's wording)
    runs = [t for t in study.get_trials() if _attrs.WORKER_DIED in t.user_attrs]
    assert [t.user_attrs[_attrs.WORKER_DIED] for t in runs] == [1, 2, 3]
    assert [_storage.given_up(t) for t in runs] == [False, False, True]
    reworded = runs[-1].user_attrs | {_attrs.REASON: "gone"}
    assert _storage.given_up(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=reworded))


def test_a_sqlite_url_with_a_query_names_its_file(tmp_path: Path) -> None:
    # "?timeout=60" was taken as part of the file's name: "does not exist", and a lock
    # file with the query in its name
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}?timeout=60"
    assert _storage._sqlite_path(url) == db
    with pytest.raises(ValueError, match=rf"storage file '{re.escape(str(db))}' does not exist"):
        _storage.load_study(url, None)
    optuna.create_study(storage=_storage.open_storage(url), study_name="s")
    assert _storage.load_study(url, None).study_name == "s"


def _journal_with_trials(path: Path, n: int) -> None:
    storage = _storage.open_storage(path)
    study = optuna.create_study(storage=storage, study_name="s")
    for i in range(n):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": float(i)},
                distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
                value=float(i),
            )
        )


def test_a_journal_record_cut_short_is_dropped_before_the_next_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A full disk cut a record short ('{"' with no newline); the next run's first record was
    # appended onto it, and from then on the whole study (its finished trials) was unreadable.
    path = tmp_path / "s.log"
    _journal_with_trials(path, 2)
    whole = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"op_code":4,"wor')
    with caplog.at_level("WARNING", logger="autowarm"):
        storage = _storage.open_storage(path)
        study = optuna.load_study(study_name="s", storage=storage)
        assert len(study.trials) == 2  # readable before the append, as optuna skips the tail
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 2.0},
                distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
                value=2.0,
            )
        )
    assert path.read_bytes().startswith(whole) and path.read_bytes().endswith(b"\n")
    again = optuna.load_study(study_name="s", storage=_storage.open_storage(path))
    assert [t.value for t in again.trials] == [0.0, 1.0, 2.0]
    assert any("cut short" in r.getMessage() for r in caplog.records)


def test_a_journal_append_that_fails_leaves_no_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the disk fills in the middle of a record: the next append (the keep-alive thread's, or
    # the resume's) must not land on the half of it
    path = tmp_path / "s.log"
    _journal_with_trials(path, 1)
    storage = _storage.open_storage(path)
    study = optuna.load_study(study_name="s", storage=storage)
    size = path.stat().st_size
    real_open = open

    class _Full:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> _Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            self.handle.write(data[:5])
            self.handle.flush()
            raise OSError(28, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _Full(handle) if Path(file) == path and "a" in mode else handle

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(OSError, match="No space left"):
        study.set_user_attr("k", 1)
    monkeypatch.undo()
    assert path.stat().st_size == size  # the half record was taken back
    study.set_user_attr("k", 2)
    again = optuna.load_study(study_name="s", storage=_storage.open_storage(path))
    assert again.user_attrs["k"] == 2 and len(again.trials) == 1


def test_a_dead_confirmation_run_is_named_as_one(caplog: pytest.LogCaptureFixture) -> None:
    # It was logged as "trial 0", which is the probe's trial, complete: the run that died was
    # confirmation run 0, of trial 1, in the study's "<name>.confirm" companion.
    study = optuna.create_study(study_name="s.confirm")
    trial = study.ask()
    trial.set_user_attr(_attrs.CONFIRMS, 1)
    trial.set_user_attr(
        _attrs.WORKER, f"{socket.gethostname()}:{_dead_pid()}:123:{_own_namespace()}"
    )
    with caplog.at_level("WARNING", logger="autowarm"):
        assert _storage.fail_dead_trials(study, requeue_them=False) == [0]
    assert "confirmation run 0 of trial 1 (study 's.confirm')" in caplog.text
    assert "trial 0:" not in caplog.text


def test_a_journal_append_interrupted_after_its_record_is_whole_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a Ctrl-C (or tune's SIGTERM) that lands after the record is written and synced: the
    # record stays, as another worker may have read it already (truncating it broke that
    # reader's offsets for good)
    path = tmp_path / "s.log"
    _journal_with_trials(path, 1)
    study = optuna.load_study(study_name="s", storage=_storage.open_storage(path))
    real_fsync = os.fsync

    def interrupted(fd: int) -> None:
        real_fsync(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.set_user_attr("k", 1)
    monkeypatch.undo()
    again = optuna.load_study(study_name="s", storage=_storage.open_storage(path))
    assert again.user_attrs["k"] == 1


def test_a_damaged_journal_line_is_named_with_the_file_and_what_can_be_kept(
    tmp_path: Path,
) -> None:
    # Two records merged on one line (an append onto a cut-short record, by an autowarm from
    # before the repair, or another program): optuna said only "Extra data: line 1 column
    # 144 (char 143)", naming neither the file nor what could be kept
    path = tmp_path / "s.log"
    _journal_with_trials(path, 5)
    lines = path.read_bytes().splitlines(keepends=True)
    n = 3  # a line in the middle (the first is the study's, then one a trial)
    assert len(lines) > n + 1
    lines[n - 1 : n + 1] = [lines[n - 1].rstrip(b"\n") + lines[n]]
    path.write_bytes(b"".join(lines))
    with pytest.raises(ValueError) as caught:
        optuna.load_study(study_name="s", storage=_storage.open_storage(path))
    message = str(caught.value)
    assert message.startswith(f"the journal file {path} is damaged at line {n}, which is not")
    assert f"keep its first {n - 1} line(s) (head -n {n - 1} {path} > fixed.log)" in message
    # what it says to keep is a study optuna reads
    fixed = tmp_path / "fixed.log"
    fixed.write_bytes(b"".join(lines[: n - 1]))
    optuna.load_study(study_name="s", storage=_storage.open_storage(fixed))
    # the first line itself (merged with the second: it starts as a journal's does)
    path.write_bytes(b"".join([lines[0].rstrip(b"\n"), *lines[1:]]))
    with pytest.raises(ValueError, match=r"damaged at line 1, .* No record before it can be kept"):
        _storage.open_storage(path)


def test_a_sqlite_write_waits_for_another_process_lock_as_long_as_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sqlite3 waits 5 s for a lock by default; the storage waits SQLITE_BUSY_TIMEOUT (set
    # short here, so that the wait ends while the lock is held: it is the one applied)
    import sqlite3
    import threading
    import time

    db = tmp_path / "s.db"
    optuna.create_study(storage=_storage.open_storage(db, heartbeat_interval=None), study_name="s")
    monkeypatch.setattr(_storage, "SQLITE_BUSY_TIMEOUT", 0.2)
    storage = _storage.open_storage(db, heartbeat_interval=None)
    holder = sqlite3.connect(db, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing
    threading.Timer(1.5, holder.rollback).start()
    started = time.monotonic()
    with pytest.raises(optuna.exceptions.StorageInternalError) as caught:
        storage.set_study_user_attr(storage.get_study_id_from_name("s"), "k", 1)
    assert "database is locked" in str(caught.value.__cause__)
    assert time.monotonic() - started < 1.2  # gave up after its own timeout, not sqlite3's 5 s
    time.sleep(1.5)
    holder.close()
    assert _storage.SQLITE_BUSY_TIMEOUT == 0.2
    assert _storage._engine_kwargs(f"sqlite:///{db}") == {"connect_args": {"timeout": 0.2}}
    assert _storage._engine_kwargs("postgresql+psycopg://u@h/db") == {"pool_pre_ping": True}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bob:s3cr/t@db:5432/opt", "postgresql://bob:***@db:5432/opt"),
        # SQLAlchemy reads a password up to the first "@": "?" and "/" are in it
        ("postgresql://bob:p?ss@db/opt", "postgresql://bob:***@db/opt"),
        ("postgresql+psycopg://bob:p%40ss@db/opt", "postgresql+psycopg://bob:***@db/opt"),
        ("postgresql://bob@db/opt", "postgresql://bob@db/opt"),  # no password: as it is
        # the password as a query parameter, any case, among others
        (
            "postgresql://db/opt?user=bob&PassWord=pw&sslmode=require",
            "postgresql://db/opt?user=bob&PassWord=***&sslmode=require",
        ),
        # an "@" in the query was taken for the host's: the URL came out mangled
        ("postgresql://bob:pw@db/opt?options=a@b", "postgresql://bob:***@db/opt?options=a@b"),
        ("sqlite:///runs/a:b@c.db?timeout=60", "sqlite:///runs/a:b@c.db?timeout=60"),  # a path
        ("journal:///runs/night.log", "journal:///runs/night.log"),
    ],
)
def test_redact_hides_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert _storage.redact(url) == shown


def test_url_of_a_study_in_a_relative_sqlite_file_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the report is read from another folder: "sqlite:///autowarm.db" named the wrong file
    monkeypatch.chdir(tmp_path)
    storage = optuna.storages.RDBStorage("sqlite:///s.db?timeout=60")
    study = optuna.create_study(storage=storage, study_name="s")
    assert _storage.url_of(study) == f"sqlite:///{tmp_path / 's.db'}?timeout=60"
    assert _storage.url_of(optuna.create_study()) is None  # in memory: no URL names it
    for memory in ("sqlite://", "sqlite:///:memory:"):  # nor one another process could open
        in_memory = optuna.create_study(storage=optuna.storages.RDBStorage(memory))
        assert _storage.url_of(in_memory) is None
