"""Opening storages: an Optuna ``BaseStorage`` object, an RDB URL (``sqlite:///PATH``, ``postgresql+psycopg://...``)
or a journal file path, locked with ``flock`` so that a killed worker never leaves a stale lock behind.

Schema creation is retried when two processes race for it; a journal's torn last record (a kill mid-write) is
dropped; an SQLite file that could not be made a storage is removed, not left half-made. Nothing here changes
global state: SQLite is switched to WAL only when asked (the CLI asks).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from saver_search.errors import InvalidParameter, SaverSearchError, first_line

SCHEMA_RETRIES = 12
SQLITE_TIMEOUT_S = 60.0  # how long an SQLite connection waits for another's lock
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
RACE_MARKERS = ("already exists", "unique constraint", "duplicate key", "database is locked", "alembic_version")


class FlockLock:
    """A journal file lock held with ``flock(2)`` on the journal itself: the kernel drops it when its process
    dies, so a killed worker never leaves a stale lock (Optuna's file locks wait 30 s for one).

    One open file per lock, kept until released: a Ctrl-C can land between ``flock`` and the caller's ``release``
    (Optuna's ``acquire(); try: ... finally: release()`` never releases an interrupted ``acquire``), and the
    cleanup that follows writes to the journal again. A second ``flock`` on a new open file of the journal would
    wait for this very process forever; on the kept one it returns at once."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        if self._fd is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        import fcntl

        fd = self._fd
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)  # unlocked before it is forgotten: an interrupt here leaves no lock
            self._fd = None
            os.close(fd)


def open_storage(storage: str | BaseStorage | None, *, sqlite_wal: bool = False) -> BaseStorage | None:
    """An Optuna storage from an object (returned as is), an RDB URL or a journal file path; None in memory.

    Args:
        storage: ``sqlite:///PATH``, ``postgresql+psycopg://USER@HOST/DB`` (any SQLAlchemy URL), a journal
            file path, or a ``BaseStorage``.
        sqlite_wal: switch an SQLite database to write-ahead logging with ``synchronous=NORMAL`` (persistent
            in the file; faster, and readers no longer block the writer). Off by default: the library does
            not change a user's database settings.
    """
    if storage is None or isinstance(storage, BaseStorage):
        return storage
    if not isinstance(storage, (str, os.PathLike)):
        raise InvalidParameter("storage", f"must be a URL, a journal file path or an optuna storage, got {type(storage).__name__}")
    storage = str(storage)
    if "://" in storage:
        return _open_rdb(storage, sqlite_wal)
    path = Path(storage)
    if path.exists() and not path.is_file():
        raise InvalidParameter("storage", f"{storage} is not a regular file: give a journal file path or an RDB URL")
    if path.suffix in SQLITE_SUFFIXES and (not path.exists() or _is_sqlite(path)):
        raise InvalidParameter("storage", f"{storage} names an SQLite database by its file name: pass "
                               f"sqlite:///{storage} (a plain path is a journal file; give it another suffix, e.g. .journal)")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        _drop_torn_record(storage)
        return JournalStorage(JournalFileBackend(storage, lock_obj=FlockLock(storage)))  # type: ignore[arg-type]
    except OSError as err:
        raise SaverSearchError(f"cannot open journal file {storage}: {err.strerror or err}") from err
    except (ValueError, AssertionError, KeyError, TypeError) as err:  # replayed at once: a damaged file fails
        raise SaverSearchError(f"{storage} is not an Optuna storage this version can read (a journal file holds one "
                               f"JSON record of a known kind a line: {first_line(err)}); pass the storage the search "
                               "was run with") from err


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(16) == b"SQLite format 3\x00"


def _drop_torn_record(path: str) -> None:
    """Cut a journal's last line when a writer was killed (or ran out of disk) halfway through it.

    Optuna skips a torn last line, but the next record is appended to it and both become one unreadable line,
    after which the journal cannot be read at all. Writers append under the journal's lock, so under the lock a
    line without its newline is no longer being written: it was never a record, and nothing complete is lost."""
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        return
    lock = FlockLock(path)
    lock.acquire()
    try:
        with open(path, "rb+") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(size - 1, 0))
            if file.read(1) == b"\n":
                return
            keep = size
            while keep > 0:
                start = max(keep - 65536, 0)
                file.seek(start)
                newline = file.read(keep - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                keep = start
            file.truncate(keep)
    finally:
        lock.release()


def _open_rdb(url: str, sqlite_wal: bool) -> BaseStorage:
    """An RDB storage; schema creation is retried while other processes race to create the same tables. A new
    SQLite file that could not be made a storage (a full disk, a read-only folder) is removed, not left half-made."""
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    sqlite_path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    new_file = sqlite_path if sqlite_path is not None and not storage_exists(url) else None
    for attempt in range(SCHEMA_RETRIES):
        try:
            if sqlite_wal and sqlite_path is not None:
                _sqlite_wal_file(sqlite_path)
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            break
        except ModuleNotFoundError as err:
            raise SaverSearchError(
                f"cannot open storage {url}: the database driver '{err.name}' is not installed; for PostgreSQL "
                "install the extra: pip install 'saver_search[postgres]'"
            ) from err
        except Exception as err:  # SQLAlchemy raises many types for bad URLs, races and unreachable servers
            text = str(err).lower()
            if attempt + 1 < SCHEMA_RETRIES and any(marker in text for marker in RACE_MARKERS):
                time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
                continue
            if new_file is not None:
                new_file.unlink(missing_ok=True)
                Path(f"{new_file}-wal").unlink(missing_ok=True)
                Path(f"{new_file}-shm").unlink(missing_ok=True)
            raise SaverSearchError(f"cannot open storage {url}: {str(err).splitlines()[0]}") from err
    if sqlite_wal and url.startswith("sqlite"):
        _sqlite_synchronous_normal(rdb)
    return rdb


def _sqlite_wal_file(path: Path) -> None:
    """Put the SQLite file in write-ahead logging (a setting stored in the file) before any table is made.

    Why here and not on each connection: switching the journal mode takes an exclusive lock, and when a
    connection that holds a shared lock meets another one's pending lock SQLite answers "database is locked"
    at once, without waiting its busy timeout. Eight workers started at one barrier hit that in CI when every
    new pooled connection asked for WAL while others created the schema in rollback mode. Here the switch
    happens once, before the schema, and a lost race is retried until ``SQLITE_TIMEOUT_S``."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_TIMEOUT_S
    while True:
        connection = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.1))
        finally:
            connection.close()


def _sqlite_synchronous_normal(rdb: optuna.storages.RDBStorage) -> None:
    """No fsync per commit (a per-connection setting): a trial makes a few small commits, each ~0.1 s with
    fsync. In WAL a killed process loses nothing; only an OS crash may lose the last trials, never the database."""
    from sqlalchemy import event

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(rdb.engine, "connect", on_connect)
    rdb.engine.dispose()


def storage_exists(storage: str | BaseStorage) -> bool:
    """False for a SQLite or journal path with no file yet (opening it would create one)."""
    if not isinstance(storage, str):
        return True
    sqlite = "sqlite:///"
    if storage.startswith(sqlite):
        return Path(storage[len(sqlite):]).is_file()
    return "://" in storage or Path(storage).is_file()
