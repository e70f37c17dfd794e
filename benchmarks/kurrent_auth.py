"""Cost of authentication per call on the KurrentDB gRPC face (issue 19): single-event
appends (W2, ``Streams.Append``) a second through ``chronik serve --kurrent-grpc`` with the
official client (kurrentdbclient), open (no policy: every caller admin) against
``--policy`` with an API token, both over TLS on the loopback (kurrentdbclient sends
credentials only with TLS, so TLS is held equal and the difference is the token check, the
policy and the rate limiter), in the same run on the same backend.

    python -m benchmarks.kurrent_auth [--backends sqlite,postgres] [--rounds 3] [--appends 1000]

The two servers run as separate processes, as users run them; rounds alternate them. Each
round appends to fresh streams. Prints the median and the min-max of each, and the ratio of
the medians. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import chronik
from chronik.security import token_store

PG = os.environ.get("CHRONIK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PER_STREAM = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificate(work: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

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
    cert_path, key_path = work / "cert.pem", work / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


async def _token(url: str) -> str:
    async with await chronik.connect(url) as store:
        _, token = await token_store(store).create(f"bench-{uuid.uuid4().hex[:8]}", ["writer"])
        return str(token)


def _serve(
    url: str, cert: Path, key: Path, policy: Path | None
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    argv = [sys.executable, "-m", "chronik", "--store", url, "serve", "--no-http",
            "--kurrent-grpc", f"127.0.0.1:{port}",
            "--tls-cert", str(cert), "--tls-key", str(key)]  # fmt: skip
    if policy is not None:
        argv += ["--policy", str(policy)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("chronik serve --kurrent-grpc did not start")


def _appends(uri: str, appends: int, tag: str) -> float:
    """Single-event appends a second, each with its expected revision (W2)."""
    from kurrentdbclient import KurrentDBClient, NewEvent, StreamState

    with KurrentDBClient(uri) as client:
        t = time.perf_counter()
        for i in range(appends):
            version = i % PER_STREAM - 1
            client.append_to_stream(
                f"auth{tag}-{i // PER_STREAM}",
                events=NewEvent(type="Deposited", data=json.dumps({"amount": i}).encode()),
                current_version=StreamState.NO_STREAM if version < 0 else version,
            )
        return appends / (time.perf_counter() - t)


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appends", type=int, default=1000)
    args = parser.parse_args(argv)
    print("| backend | open (no policy), appends/s | with a token, appends/s | token / open |")
    print("|---|---|---|---|")
    for backend in args.backends.split(","):
        work = Path(tempfile.mkdtemp())
        cert, key = _certificate(work)
        policy = work / "policy.toml"
        policy.write_text("")  # the built-in roles; every call needs credentials
        if backend == "sqlite":
            urls = [f"sqlite:///{work}/open.db", f"sqlite:///{work}/secured.db"]
        else:
            urls = [f"{PG}?schema=bench_auth_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        for url in urls:
            subprocess.run([sys.executable, "-m", "chronik", "--store", url, "init"],
                           check=True, capture_output=True)  # fmt: skip
        token = asyncio.run(_token(urls[1]))
        open_proc, open_port = _serve(urls[0], cert, key, None)
        secured_proc, secured_port = _serve(urls[1], cert, key, policy)
        uris = {
            # the open server ignores credentials; the client needs some to use TLS
            "open": f"kurrentdb://x:y@127.0.0.1:{open_port}?tls=true&tlsCAFile={cert}",
            "token": f"kurrentdb://bench:{token}@127.0.0.1:{secured_port}?tls=true&tlsCAFile={cert}",
        }
        results: dict[str, list[float]] = {"open": [], "token": []}
        try:
            for r in range(args.rounds):
                order = ("open", "token") if r % 2 == 0 else ("token", "open")
                for kind in order:
                    results[kind].append(_appends(uris[kind], args.appends, f"{kind}{r}"))
        finally:
            for proc in (open_proc, secured_proc):
                proc.terminate()
                proc.wait(20)
        ratio = statistics.median(results["token"]) / statistics.median(results["open"])
        print(f"| {backend} | {_summary(results['open'])} | {_summary(results['token'])} "
              f"| {ratio:.2f}x |")  # fmt: skip
        print(f"  raw {backend}: {json.dumps(results)}", file=sys.stderr)


if __name__ == "__main__":
    main()
