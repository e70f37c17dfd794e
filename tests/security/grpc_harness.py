"""A secured KurrentDB gRPC face for the security tests: the seeded store and policy of
:mod:`tests.security.harness`, a token per role, TLS with a self-signed certificate, the
server in its own thread and loop (the real ``kurrentdbclient`` blocks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kurrentdbclient")
pytest.importorskip("grpc")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kurrentdbclient import KurrentDBClient

import chronik
from chronik.kurrent import KurrentServer
from chronik.security import Guard, Policy, load_policy, token_store
from tests.security.harness import CATEGORIES, POLICY_TOML, ROLES, seed


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "grpc-cert.pem", tmp_path / "grpc-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


class SecuredKurrent:
    """A seeded store served under the test policy over TLS, in a background loop."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        policy: Policy | None = None,
        recheck_seconds: float = 5.0,
        tls: bool = True,
        url: str | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed(tmp_path)
        if policy is None:
            policy_path = tmp_path / "policy.toml"
            policy_path.write_text(POLICY_TOML)
            policy = load_policy(policy_path)
        self.policy = policy
        self.store: Any = self.call(chronik.connect(url or f"sqlite:///{tmp_path / 'grpc-sec.db'}"))
        self.call(seed(self.store))
        self.tokens: dict[str, str] = {}
        for role in ROLES:
            _, token = self.call(token_store(self.store).create(f"t-{role}", [role]))
            self.tokens[role] = token
        self.guard = Guard(policy, token_store(self.store))
        self.server = KurrentServer(
            self.store,
            port=0,
            guard=self.guard,
            tls=(self.cert.read_bytes(), key.read_bytes()) if tls else None,
            recheck_seconds=recheck_seconds,
        )
        self.call(self.server.start())

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=60)

    def uri(self, password: str | None = None, user: str = "someone") -> str:
        auth = "" if password is None else f"{user}:{password}@"
        tls = f"tls=true&tlsCAFile={self.cert}" if self.server.tls else "tls=false"
        return f"kurrentdb://{auth}{self.server.target}?{tls}"

    def client(self, role: str | None) -> KurrentDBClient:
        """A real client holding the token of ``role`` (``None``: no credentials)."""
        return KurrentDBClient(self.uri(None if role is None else self.tokens[role]))

    def close(self) -> None:
        try:
            self.call(self.server.stop(grace=0.2))
            self.call(self.store.close())
            self.call(_cancel_the_rest())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


async def _cancel_the_rest() -> None:
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


@contextmanager
def secured_kurrent(tmp_path: Path, **options: Any) -> Iterator[SecuredKurrent]:
    server = SecuredKurrent(tmp_path, **options)
    try:
        yield server
    finally:
        server.close()


__all__ = ["CATEGORIES", "SecuredKurrent", "secured_kurrent", "self_signed"]
