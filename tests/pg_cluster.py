"""A PostgreSQL server of a test's own (Debian's binaries, initdb in a temporary directory),
for a test that must set what the machine's shared server does not allow it to change, such
as `max_connections`. Trust authentication on 127.0.0.1; stopped and deleted afterwards."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.process import free_port

RUN_AS = "postgres"  # initdb and postgres refuse to run as root


def _bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    assert found, f"no PostgreSQL {name} under /usr/lib/postgresql"
    return str(found[-1])


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", RUN_AS, "--", *args], check=True, capture_output=True)


@contextmanager
def pg_cluster(*settings: str) -> Iterator[str]:
    """A fresh server with ``settings`` (``name=value``); yields a libpq URL for user root,
    database postgres."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-pgcluster-"))
    shutil.chown(workdir, RUN_AS)
    data = workdir / "data"
    port = free_port()
    _as_postgres(_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "root", "--no-sync")
    options = " ".join(
        [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={workdir}",
            "-c fsync=off",
            *(f"-c {s}" for s in settings),
        ]
    )
    log = workdir / "postgres.log"
    _as_postgres(_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        yield f"postgresql://root@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)
