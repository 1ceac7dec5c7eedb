"""The real parts of the end-to-end tests, each started on 127.0.0.1 and stopped afterwards:
the npm oidc-provider, the upstream app, the relay, nginx and Caddy (configured from the very
files in deploy/), plus a self-signed certificate for the proxies' TLS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_DIR = ROOT / "e2e" / "provider"


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    """Block until something accepts connections on 127.0.0.1:port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            # Not listening yet: a server's start has no other signal to wait on.
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout}s")


class Service:
    """A process with its output in a log file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cwd = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, port: int, cwd: Path | None = None) -> Service:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=cwd or self.cwd
        )
        try:
            wait_for_port(port, self.proc, self.name)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}; its log ends:\n{self.log()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: run scripts/test, which installs it")
    return path


def self_signed_certificate(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, valid for a day, for nginx's TLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oidc-relay e2e")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def replace_exactly(text: str, old: str, new: str, count: int) -> str:
    """Replace, insisting the deploy file still says what the tests rely on."""
    found = text.count(old)
    if found != count:
        raise AssertionError(f"expected {count} x {old!r} in a deploy/ file, found {found}")
    return text.replace(old, new)


def provider_service(workdir: Path, port: int, env: dict[str, str]) -> Service:
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(
            [require("npm"), "ci", "--no-audit", "--no-fund"], cwd=PROVIDER_DIR, check=True
        )
    return Service(
        "provider",
        [require("node"), str(PROVIDER_DIR / "server.mjs")],
        workdir,
        env={"PORT": str(port), **env},
    )


def upstream_service(workdir: Path, port: int) -> Service:
    return Service(
        "upstream",
        [sys.executable, "-m", "uvicorn", "tests.e2e.upstream:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        workdir,
    )  # fmt: skip


def nginx_service(
    workdir: Path, port: int, relay_port: int, upstream_port: int, *, tls: tuple[Path, Path]
) -> Service:
    cert, key = tls
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    listen = f"listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};"
    listen += f"\n    ssl_certificate_key {key};"
    site = replace_exactly(site, "listen 80;", listen, 1)
    site = replace_exactly(site, "server_name app.example.com;", "server_name 127.0.0.1;", 1)
    site = replace_exactly(site, "127.0.0.1:4180", f"127.0.0.1:{relay_port}", 3)
    site = replace_exactly(site, "127.0.0.1:8080", f"127.0.0.1:{upstream_port}", 1)
    (workdir / "site.conf").write_text(site)
    temp = workdir / "nginx-temp"
    temp.mkdir(exist_ok=True)
    (workdir / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {workdir}/site.conf;
}}
"""
    )
    return Service("nginx", [require("nginx"), "-c", str(workdir / "nginx.conf")], workdir)


def caddy_service(workdir: Path, port: int, relay_port: int, upstream_port: int) -> Service:
    site = (ROOT / "deploy" / "Caddyfile").read_text()
    site = replace_exactly(site, "app.example.com {", f"http://127.0.0.1:{port} {{", 1)
    site = replace_exactly(site, "127.0.0.1:4180", f"127.0.0.1:{relay_port}", 2)
    site = replace_exactly(site, "127.0.0.1:8080", f"127.0.0.1:{upstream_port}", 1)
    # Global options for a throwaway instance: no admin API, no state outside workdir.
    (workdir / "Caddyfile").write_text("{\n\tadmin off\n}\n\n" + site)
    return Service(
        "caddy",
        [require("caddy"), "run", "--config", str(workdir / "Caddyfile"), "--adapter", "caddyfile"],
        workdir,
        env={"XDG_DATA_HOME": str(workdir / "caddy-data"), "XDG_CONFIG_HOME": str(workdir)},
    )
