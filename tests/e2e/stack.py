"""The real parts of the end-to-end tests, each started on 127.0.0.1 and stopped afterwards:
the npm oidc-provider, the upstream app, the relay, nginx, Caddy and HAProxy (configured from
the very files in deploy/), plus a self-signed certificate for the proxies' TLS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
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


def wait_for_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def wait_for_tls(port: int, cafile: Path, timeout: float = 30) -> None:
    """Until a TLS handshake on the port succeeds against ``cafile``: Caddy listens and writes
    its root certificate before it has issued the site's own, and a handshake in between
    gets an internal-error alert."""
    wait_for_file(cafile, timeout)
    context = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except (ssl.SSLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
    workdir: Path,
    ports: tuple[int, int],
    relay_port: int,
    upstream_port: int,
    *,
    tls: tuple[Path, Path],
    site: str | None = None,
    name: str = "nginx",
) -> Service:
    """nginx running deploy/nginx.conf as written, inside http {} as its header says, with
    only the ports (https, http), host and certificate paths replaced. ``site`` runs a changed
    copy instead (to show a test notices a missing line)."""
    https_port, http_port = ports
    cert, key = tls
    text = (ROOT / "deploy" / "nginx.conf").read_text() if site is None else site
    text = replace_exactly(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;", 1)
    text = replace_exactly(text, "listen 80;", f"listen 127.0.0.1:{http_port};", 1)
    text = replace_exactly(text, "server_name app.example.com;", "server_name 127.0.0.1;", 2)
    text = replace_exactly(text, '$host != "app.example.com"', '$host != "127.0.0.1"', 1)
    text = replace_exactly(text, "/etc/ssl/certs/app.example.com.pem", str(cert), 1)
    text = replace_exactly(text, "/etc/ssl/private/app.example.com.key", str(key), 1)
    text = replace_exactly(text, "server 127.0.0.1:4180;", f"server 127.0.0.1:{relay_port};", 1)
    text = replace_exactly(text, "127.0.0.1:8080", f"127.0.0.1:{upstream_port}", 4)
    (workdir / f"{name}-site.conf").write_text(text)
    temp = workdir / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    (workdir / f"{name}.conf").write_text(
        f"""
daemon off;
worker_processes 1;
user root;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {workdir}/{name}-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {workdir}/{name}-site.conf;
}}
"""
    )
    return Service(name, [require("nginx"), "-c", str(workdir / f"{name}.conf")], workdir)


def caddy_service(
    workdir: Path, ports: tuple[int, int], relay_port: int, upstream_port: int
) -> Service:
    """Caddy running deploy/Caddyfile as written, with only the site address (https on a
    free port, a certificate from Caddy's own local CA for 127.0.0.1) and ports replaced."""
    https_port, http_port = ports
    site = (ROOT / "deploy" / "Caddyfile").read_text()
    site = replace_exactly(site, "app.example.com {", f"https://127.0.0.1:{https_port} {{", 1)
    site = replace_exactly(site, "127.0.0.1:4180", f"127.0.0.1:{relay_port}", 2)
    site = replace_exactly(site, "127.0.0.1:8080", f"127.0.0.1:{upstream_port}", 2)
    # Global options for a throwaway instance: no admin API, no state outside workdir, no
    # system trust store, the HTTP redirect port out of the way.
    options = f"{{\n\tadmin off\n\tskip_install_trust\n\thttp_port {http_port}\n}}\n\n"
    (workdir / "Caddyfile").write_text(options + site)
    return Service(
        "caddy",
        [require("caddy"), "run", "--config", str(workdir / "Caddyfile"), "--adapter", "caddyfile"],
        workdir,
        env={"XDG_DATA_HOME": str(workdir / "caddy-data"), "XDG_CONFIG_HOME": str(workdir)},
    )


def haproxy_service(
    workdir: Path,
    ports: tuple[int, int],
    relay_port: int,
    upstream_port: int,
    *,
    tls: tuple[Path, Path],
    name: str = "haproxy",
) -> Service:
    """HAProxy running deploy/haproxy.cfg as written, after a global section of the test's
    own (as the recipe goes after Debian's), with only the ports (https, http), the
    certificate (HAProxy wants certificate and key in one file, made here from ``tls``) and
    the path of deploy/haproxy-auth.lua replaced."""
    https_port, http_port = ports
    cert, key = tls
    pem = workdir / f"{name}.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    text = replace_exactly(text, "bind :443 ", f"bind 127.0.0.1:{https_port} ", 1)
    text = replace_exactly(text, "bind :80\n", f"bind 127.0.0.1:{http_port}\n", 1)
    text = replace_exactly(text, "/etc/haproxy/certs/app.example.com.pem", str(pem), 1)
    own_names = "-m str app.example.com app.example.com:443"
    text = replace_exactly(text, own_names, f"-m str 127.0.0.1:{https_port}", 1)
    lua = ROOT / "deploy" / "haproxy-auth.lua"
    text = replace_exactly(text, "/etc/haproxy/haproxy-auth.lua", str(lua), 1)
    text = replace_exactly(text, "127.0.0.1:4180", f"127.0.0.1:{relay_port}", 3)
    text = replace_exactly(text, "127.0.0.1:8080", f"127.0.0.1:{upstream_port}", 1)
    own = f"global\n    log stdout format raw local0 info\n    pidfile {workdir}/{name}.pid\n\n"
    (workdir / f"{name}.cfg").write_text(own + text)
    argv = [require("haproxy"), "-db", "-f", str(workdir / f"{name}.cfg")]
    return Service(name, argv, workdir)


def caddy_root_certificate(workdir: Path) -> Path:
    """The root of the local CA Caddy made for its certificate (appears once it serves)."""
    return workdir / "caddy-data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
