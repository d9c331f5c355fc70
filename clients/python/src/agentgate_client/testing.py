"""Helpers for test suites: real tokens and a real gateway, never a fake token or a bypass.

- :func:`mint_token`: a real HS256 token, signed with the secret the gateway verifies.
- :func:`start_gateway` / :class:`Gateway`: the real ``agentgate`` binary on
  ``127.0.0.1:0`` with one HS256 issuer ``test`` and a fresh random secret. The pytest
  plugin's fixtures ``agentgate_gateway`` and ``agentgate_gateway_factory`` are built on it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

__all__ = [
    "Gateway",
    "GatewayError",
    "find_binary",
    "mint_token",
    "start_gateway",
    "to_toml",
]

#: Seconds to wait for a started gateway to write its address.
START_TIMEOUT_S = 30.0
#: Seconds between SIGTERM and SIGKILL when stopping.
STOP_GRACE_S = 10.0


#: An HTTP opener that ignores proxy variables: the test gateway is on 127.0.0.1.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class GatewayError(RuntimeError):
    """The test gateway could not be found, configured or started."""


def mint_token(
    secret: str | bytes,
    *,
    sub: str,
    ttl: int = 900,
    scopes: Iterable[str] = ("agents:run",),
    tenant: str | None = None,
    issuer: str | None = None,
    audience: str | list[str] | None = None,
    **claims: Any,
) -> str:
    """A real HS256 token signed with ``secret``.

    It carries ``sub``, ``iat`` (now), ``exp`` (now + ``ttl``), a random ``jti``, the
    ``scope`` claim (space-separated ``scopes``), and when given ``tenant``, ``iss``
    (``issuer``) and ``aud`` (``audience``). ``claims`` are added last and win.
    """
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "exp": now + int(ttl),
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes),
    }
    if tenant is not None:
        payload["tenant"] = tenant
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="HS256")


def find_binary() -> str:
    """The gateway binary: ``$AGENTGATE_BIN``, else ``agentgate`` on ``PATH``."""
    env = os.environ.get("AGENTGATE_BIN")
    if env:
        path = Path(env)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise GatewayError(
                f"AGENTGATE_BIN is set to {env!r}, which is not an executable file; point "
                "it at the agentgate binary (e.g. target/debug/agentgate after "
                "`cargo build -p agentgate`) or unset it to use `agentgate` on PATH"
            )
        return str(path)
    found = shutil.which("agentgate")
    if found:
        return found
    raise GatewayError(
        "no agentgate binary: AGENTGATE_BIN is not set and `agentgate` is not on PATH; "
        "set AGENTGATE_BIN=/path/to/agentgate or put agentgate on PATH "
        "(build it with `cargo build -p agentgate`)"
    )


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: tables merge key by key, any other value of
    ``over`` (arrays of tables included) replaces the one of ``base``."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for c in value:
            if c == '"':
                out.append('\\"')
            elif c == "\\":
                out.append("\\\\")
            elif ord(c) < 0x20 or ord(c) == 0x7F:
                out.append(f"\\u{ord(c):04x}")
            else:
                out.append(c)
        out.append('"')
        return "".join(out)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(doc: Mapping[str, Any]) -> str:
    """A TOML document of ``doc`` (tables, arrays of tables, strings, numbers, bools)."""
    lines: list[str] = []

    def emit(table: Mapping[str, Any], path: list[str]) -> None:
        subtables: list[tuple[str, Any, bool]] = []
        for key, value in table.items():
            if isinstance(value, Mapping):
                subtables.append((key, value, False))
            elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                subtables.append((key, value, True))
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value, is_array in subtables:
            sub = [*path, _toml_key(key)]
            if is_array:
                for item in value:
                    lines.append("")
                    lines.append(f"[[{'.'.join(sub)}]]")
                    emit(item, sub)
            else:
                lines.append("")
                lines.append(f"[{'.'.join(sub)}]")
                emit(value, sub)

    emit(doc, [])
    return "\n".join(lines).strip() + "\n"


class Gateway:
    """A running gateway (the real binary) for tests.

    Attributes:
        url: ``ws://127.0.0.1:PORT/v1/ws``.
        http_url: ``http://127.0.0.1:PORT``.
        addr: ``127.0.0.1:PORT``.
        secret: the HS256 secret of issuer ``test`` (``str``).
        config: the configuration it was started with (a dict).
        config_path: the TOML file.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        addr: str,
        secret: str,
        config: dict[str, Any],
        directory: tempfile.TemporaryDirectory[str],
        log_path: Path,
        config_path: Path,
    ) -> None:
        self.process = process
        self.addr = addr
        tls = bool(config.get("server", {}).get("tls_cert_file"))
        self.url = f"{'wss' if tls else 'ws'}://{addr}/v1/ws"
        self.http_url = f"{'https' if tls else 'http'}://{addr}"
        self.secret = secret
        self.config = config
        self.config_path = config_path
        self.log_path = log_path
        self._directory = directory
        self._final_log: str | None = None

    def __repr__(self) -> str:
        return f"Gateway(url={self.url!r}, pid={self.process.pid})"

    def mint(self, sub: str = "test-user", **kwargs: Any) -> str:
        """A real token of issuer ``test`` (as :func:`mint_token` with this secret)."""
        return mint_token(self.secret, sub=sub, **kwargs)

    def log_text(self) -> str:
        """Everything the gateway wrote to stdout and stderr so far (after ``stop()``:
        everything it wrote)."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def revoke(self, jti: str) -> None:
        """Revoke the token with this ``jti`` (``POST /v1/admin/revoke`` with an admin
        token of issuer ``test``)."""
        admin = self.mint("test-admin", scopes=("admin",), ttl=60)
        req = urllib.request.Request(  # noqa: S310 (http to the local test gateway)
            f"{self.http_url}/v1/admin/revoke",
            data=json.dumps({"jti": jti}).encode(),
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
            method="POST",
        )
        with _DIRECT.open(req, timeout=10) as resp:
            if resp.status != 200:
                raise GatewayError(f"revocation answered HTTP {resp.status}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; returns the exit status."""
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._final_log is None:
            self._final_log = self.log_text()
            self._directory.cleanup()
        return proc.returncode

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until ``/healthz`` answers, so that the gateway serves (and handles SIGTERM)."""
    url = f"{base_url}/healthz"
    opener = _DIRECT
    if url.startswith("https:"):
        # liveness only: the certificate is the test's own, checked by the tests themselves
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
    while True:
        try:
            with opener.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise GatewayError(f"the gateway at {base_url} does not answer /healthz")
        time.sleep(0.02)


def start_gateway(extra_toml: str = "", *, binary: str | None = None) -> Gateway:
    """Start the real gateway on ``127.0.0.1:0`` with one HS256 issuer ``test`` (fresh
    random secret), ``extra_toml`` parsed and merged over that configuration (its keys
    win), and return once it listens."""
    try:
        extra = tomllib.loads(extra_toml) if extra_toml.strip() else {}
    except tomllib.TOMLDecodeError as e:
        raise GatewayError(f"extra_toml is not valid TOML: {e}") from None
    binary = binary or find_binary()
    directory = tempfile.TemporaryDirectory(prefix="agentgate-test-")
    root = Path(directory.name)
    process: subprocess.Popen[bytes] | None = None
    try:
        secret = secrets.token_hex(32)
        secret_path = root / "hs256.secret"
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        addr_path = root / "addr"
        base: dict[str, Any] = {
            "server": {"listen": "127.0.0.1:0", "addr_file": str(addr_path)},
            "auth": {
                "jwt": [
                    {
                        "name": "test",
                        "algorithms": ["HS256"],
                        "secret_file": str(secret_path),
                    }
                ]
            },
        }
        config = deep_merge(base, extra)
        # extra_toml may move the address file; it is relative to the gateway's cwd (root)
        addr_path = root / str(config.get("server", {}).get("addr_file", addr_path))
        config_path = root / "agentgate.toml"
        config_path.write_text(to_toml(config), "utf-8")
        env = {
            k: v for k, v in os.environ.items() if not (k.startswith("AGENTGATE_") and "__" in k)
        }
        env["AGENTGATE_HOME"] = str(root / "home")
        env["NO_COLOR"] = "1"  # log_text() is plain text
        log_path = root / "gateway.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [binary, "serve", "--config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        addr = ""
        while time.monotonic() < deadline:
            if addr_path.exists():
                addr = addr_path.read_text().strip()
                if addr:
                    break
            if process.poll() is not None:
                text = log_path.read_text("utf-8", "replace")[-4000:]
                raise GatewayError(
                    f"the gateway ({binary}) exited with status {process.returncode} "
                    f"before listening; its output:\n{text}"
                )
            time.sleep(0.02)
        if not addr:
            raise GatewayError(
                f"the gateway ({binary}) did not write its address within "
                f"{START_TIMEOUT_S:g} s; its output:\n{log_path.read_text('utf-8', 'replace')}"
            )
        tls = bool(config.get("server", {}).get("tls_cert_file"))
        _wait_healthy(f"{'https' if tls else 'http'}://{addr}", process, deadline)
    except BaseException:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        directory.cleanup()
        raise
    return Gateway(
        process,
        addr=addr,
        secret=secret,
        config=config,
        directory=directory,
        log_path=log_path,
        config_path=config_path,
    )
