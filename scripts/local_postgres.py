"""A throwaway PostgreSQL server in a folder, for trying out many workers, the tests and the benchmarks.

    python scripts/local_postgres.py start /tmp/pg     # prints the storage URL to give every worker
    python scripts/local_postgres.py stop /tmp/pg

Uses the server binaries of the machine (``initdb``, ``pg_ctl``, e.g. Debian's ``postgresql-15``); listens
only on a Unix socket in the folder. ``initdb`` refuses to run as root, so as root the server runs as the
``postgres`` user. Not for real data: fsync is off.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

USER = "saver"


def server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (on PATH or under /usr/lib/postgresql/*/bin), or None."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(found[0]).parent if found else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def start(folder: str | Path) -> str:
    """Create and start a server in ``folder``; returns the SQLAlchemy URL of its ``postgres`` database."""
    binaries = server_binaries()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): install e.g. Debian's postgresql-15")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    run = lambda command: subprocess.run(_as_server_user(command), check=True, capture_output=True, text=True)  # noqa: E731
    if not data.exists():
        run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync"])
    run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
         f"-k {folder} -c listen_addresses='' -F -c max_connections=200", "start"])
    return url(folder)


def url(folder: str | Path, database: str = "postgres") -> str:
    return f"postgresql+psycopg://{USER}@/{database}?host={Path(folder).resolve()}"


def create_database(folder: str | Path, database: str) -> str:
    """A new empty database on the server in ``folder``; returns its URL."""
    import psycopg

    with psycopg.connect(host=str(Path(folder).resolve()), user=USER, dbname="postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    return url(folder, database)


def stop(folder: str | Path) -> None:
    binaries = server_binaries()
    data = Path(folder).resolve() / "data"
    if binaries is not None and data.exists():
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python scripts/local_postgres.py start|stop FOLDER")
    if sys.argv[1] == "start":
        print(start(sys.argv[2]))
    else:
        stop(sys.argv[2])
