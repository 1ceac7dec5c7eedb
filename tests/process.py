"""Run `relay serve` as a real process and read its JSON log lines."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELAY = str(Path(sys.executable).parent / "relay")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RelayProcess:
    """`relay serve --config PATH` in the background; every stdout line is kept."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd  # where a relative path in the config (SQLite's default) lands
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, ready_marker: str = "relay.listening", timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [RELAY, "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_for(ready_marker, timeout)

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, marker: str, timeout: float = 30) -> str:
        """Block until a line containing ``marker`` is printed (or fail if the process ends)."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no {marker!r} in: {self.lines[-20:]}") from None
            if line is None:
                raise RuntimeError(f"relay exited before {marker!r}: {self.lines[-20:]}")
            self.lines.append(line)
            if marker in line:
                return line

    def collect(self) -> list[dict[str, Any]]:
        """Every line printed so far, without waiting, as parsed events."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # the end stays visible to wait_for and stop
                break
            self.lines.append(line)
        return self.events()

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then wait for a graceful exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        self._close()
        return code

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def __enter__(self) -> RelayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            while self._queue.get(timeout=10) is not None:
                pass
        self._close()


@dataclass
class Demo:
    ports: dict[str, int]
    banner: str
    rest: str = ""  # what it printed after the banner, once it has stopped

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['app']}/"


@contextmanager
def running_demo(tmp_path: Path) -> Iterator[Demo]:
    """`relay demo` on free ports with its own SQLite file, until all three servers listen."""
    ports = {"relay": free_port(), "provider": free_port(), "app": free_port()}
    argv = [RELAY, "demo", "--database", f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"]
    for name, port in ports.items():
        argv += [f"--{name}-port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        for line in proc.stdout:
            seen.append(line)
            if sum("Uvicorn running on" in s for s in seen) == 3:
                break
        demo = Demo(ports, "".join(seen))
        yield demo
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        rest = ""
        if proc.stdout is not None:
            rest = proc.stdout.read()
            proc.stdout.close()
    demo.rest = rest
