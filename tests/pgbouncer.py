"""PgBouncer, Debian's package, in transaction pooling in front of the machine's PostgreSQL,
started for a test and stopped after it. Its ini is the package's own
(/etc/pgbouncer/pgbouncer.ini) with only what a deployment must set changed: where it listens
and keeps its files, which server it pools, how clients authenticate (the server trusts
127.0.0.1 here), and `pool_mode = transaction`, the mode the issue is about."""

from __future__ import annotations

import configparser
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.process import free_port

STOCK_INI = Path("/etc/pgbouncer/pgbouncer.ini")
RUN_AS = "postgres"  # PgBouncer refuses to run as root


@contextmanager
def pgbouncer(database_url: str, *, users: tuple[str, ...] = ()) -> Iterator[str]:
    """``database_url`` as seen through a PgBouncer in transaction pooling."""
    url = make_url(database_url)
    port = free_port()
    # Its own directory in /tmp: pytest's tmp_path is not reachable by another user.
    workdir = Path(tempfile.mkdtemp(prefix="relay-pgbouncer-"))
    shutil.chown(workdir, RUN_AS)
    ini = configparser.ConfigParser(interpolation=None)
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read(STOCK_INI)
    ini["databases"] = {"*": f"host={url.host or '127.0.0.1'} port={url.port or 5432}"}
    ini["pgbouncer"].update(
        {
            "listen_addr": "127.0.0.1",
            "listen_port": str(port),
            "unix_socket_dir": "",
            "logfile": str(workdir / "pgbouncer.log"),
            "pidfile": str(workdir / "pgbouncer.pid"),
            "auth_type": "trust",
            "auth_file": str(workdir / "userlist.txt"),
            "pool_mode": "transaction",
        }
    )
    names = {url.username or "root", *users}
    (workdir / "userlist.txt").write_text("".join(f'"{n}" ""\n' for n in sorted(names)))
    with (workdir / "pgbouncer.ini").open("w") as file:
        ini.write(file)
    for path in workdir.iterdir():
        shutil.chown(path, RUN_AS)
    proc = subprocess.Popen(
        ["runuser", "-u", RUN_AS, "--", "pgbouncer", str(workdir / "pgbouncer.ini")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.05)
        yield url.set(host="127.0.0.1", port=port).render_as_string(False)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
