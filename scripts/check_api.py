"""Tests openapi.yaml against the running server with schemathesis.

Run through scripts/check-api, which provides the venv (schemathesis,
confluent-kafka). This script, in order:

  1. makes sure PostgreSQL and the broker are up and creates this run's topics
     (scripts/infra-up with a unique KAFKA_TOPIC_PREFIX),
  2. creates a fresh database, runs `interest-now migrate` and
     `interest-now plans import examples/plans.json`,
  3. starts `interest-now serve --role all` on free loopback ports and waits
     for /readyz,
  4. produces a few balance snapshots and waits until those accounts exist,
  5. runs `schemathesis run openapi.yaml` against the /v1 API (admin paths
     excluded) with the bearer token, bounded in examples and time,
  6. always stops the server and drops the database and topics.

The same file is schemathesis's hooks module (SCHEMATHESIS_HOOKS): some
generated account ids are swapped for the accounts of step 4, so that claims
and views that succeed (201, 200, 409 already_claimed_today) are checked
against the schema too, not only the 404s of unknown accounts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("INTEREST_NOW_CACHE", Path.home() / ".cache" / "interest-now"))
BIN = Path(os.environ.get("INTEREST_NOW_BIN", ROOT / "target" / "debug" / "interest-now"))
ADMIN_DB_URL = os.environ.get("CHECK_API_ADMIN_DB", "postgres://postgres@127.0.0.1:5432/postgres")
BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
TOPICS = ["balance-snapshots", "balance-snapshots.dlq", "interest-claims", "interest-payouts"]
ACCOUNTS_ENV = "CHECK_API_ACCOUNTS"
CLAIMS_ENV = "CHECK_API_CLAIMS"

# Bounds (seconds / counts).
INFRA_TIMEOUT_S = int(os.environ.get("CHECK_API_INFRA_TIMEOUT", "900"))
READY_TIMEOUT_S = 60
ACCOUNTS_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
SCHEMATHESIS_MAX_TIME_S = int(os.environ.get("CHECK_API_MAX_TIME", "100"))
SCHEMATHESIS_MAX_EXAMPLES = int(os.environ.get("CHECK_API_MAX_EXAMPLES", "60"))
# schemathesis checks. Left out: positive_data_acceptance, which reads the
# documented stateful refusals of valid requests (422 idempotency_key_reused
# when the generator reuses a key, 409 already_claimed_today) as failures.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
]
if os.environ.get("CHECK_API_CHECKS"):
    CHECKS = os.environ["CHECK_API_CHECKS"].split(",")


def log(msg: str) -> None:
    print(f"check-api: {msg}", file=sys.stderr, flush=True)


# ---- schemathesis hooks (loaded by schemathesis through SCHEMATHESIS_HOOKS) ----


def _register_hooks() -> None:
    import re

    import schemathesis

    accounts = [a for a in os.environ.get(ACCOUNTS_ENV, "").split(",") if a]
    claims = [c for c in os.environ.get(CLAIMS_ENV, "").split(",") if c]
    valid = {
        "account_id": lambda v: re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v) is not None,
        "claim_id": lambda v: re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", v) is not None,
    }
    known = {"account_id": accounts, "claim_id": claims}

    @schemathesis.hook
    def map_path_parameters(context, path_parameters):
        # About one case in three targets an account or claim that exists.
        # Only valid values are swapped (a negative case stays negative), and
        # deterministically, since hypothesis replays cases.
        for name, ids in known.items():
            value = (path_parameters or {}).get(name)
            if ids and isinstance(value, str) and valid[name](value):
                h = zlib.crc32(value.encode())
                if h % 3 == 0:
                    path_parameters[name] = ids[(h // 3) % len(ids)]
        return path_parameters


if __name__ != "__main__" and os.environ.get(ACCOUNTS_ENV) is not None:
    _register_hooks()


# ---- orchestration ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict[str, str], timeout: int, what: str) -> str:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"check-api: {what} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
    return proc.stdout


def psql(sql: str) -> None:
    run(["psql", ADMIN_DB_URL, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], dict(os.environ), 60, f"psql {sql!r}")


def http_get(url: str, token: str | None = None, timeout: float = 2.0) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_until(what: str, timeout_s: int, ok, server: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if server is not None and server.poll() is not None:
            raise SystemExit(f"check-api: the server exited (code {server.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"check-api: timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def produce_snapshots(prefix: str, accounts: list[tuple[str, str]]) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": BROKERS,
            # The service's partitioner (SPEC §3): Java-default murmur2.
            "partitioner": "murmur2_random",
            "message.timeout.ms": 15000,
        }
    )
    as_of = (datetime.now(timezone.utc) - timedelta(days=2)).replace(microsecond=0).isoformat()
    errors: list[str] = []
    for account, balance in accounts:
        value = (
            f'{{"account_id":"{account}","seq":1,"balance":"{balance}",'
            f'"currency":"KRW","as_of":"{as_of}"}}'
        )
        producer.produce(
            f"{prefix}balance-snapshots",
            key=account.encode(),
            value=value.encode(),
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )
    remaining = producer.flush(20)
    if remaining or errors:
        raise SystemExit(f"check-api: producing snapshots failed: {remaining} undelivered, errors {errors}")


def seed_claims(base: str, token: str, db_url: str, accounts: list[str]) -> list[str]:
    """Claims with stored answers (a 201 payout, a 409 refusal), for GET /v1/claims/{id}."""
    for account, key in [(accounts[0], "seed-1"), (accounts[0], "seed-2")]:
        req = urllib.request.Request(
            f"{base}/v1/accounts/{account}/interest/claims",
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        )
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        if status not in (201, 202, 409):
            raise SystemExit(f"check-api: seeding claim {key} for {account} answered {status}")
    ids = run(["psql", db_url, "-qAtc", "SELECT claim_id FROM claims ORDER BY accepted_at"], dict(os.environ), 30, "psql")
    return ids.split()


def delete_topics(prefix: str) -> None:
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": BROKERS})
        futures = admin.delete_topics([prefix + t for t in TOPICS], operation_timeout=10, request_timeout=15)
        for f in futures.values():
            try:
                f.result(timeout=15)
            except Exception:  # noqa: BLE001 - best effort clean-up
                pass
    except Exception as e:  # noqa: BLE001
        log(f"could not delete topics {prefix}*: {e}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"server did not stop within {STOP_TIMEOUT_S}s of SIGTERM; killing it")
        server.kill()
        server.wait(timeout=10)


def schemathesis_cmd(base_url: str, token: str, report_dir: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        str(ROOT / "openapi.yaml"),
        "--url",
        base_url,
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-tag",
        "admin",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(SCHEMATHESIS_MAX_EXAMPLES),
        "--max-time",
        str(SCHEMATHESIS_MAX_TIME_S),
        # One worker: CPython 3.11's ast module is not thread-safe, and
        # hypothesis parses lambdas with it ("AST constructor recursion depth
        # mismatch" with 2 workers).
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--generation-database",
        "none",
        "--seed",
        os.environ.get("CHECK_API_SEED", "20261122"),
        "--report",
        os.environ.get("CHECK_API_REPORT", "junit"),
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]


def prune(work: Path, keep: int = 5) -> None:
    """Keeps the newest `keep` server logs and reports of earlier runs."""
    for pattern in ("serve-*.log", "report-*"):
        old = sorted(work.glob(pattern), key=lambda p: p.stat().st_mtime)[:-keep]
        for path in old:
            subprocess.run(["rm", "-rf", str(path)], check=False)


def main() -> int:
    if not BIN.is_file():
        log(f"{BIN} is missing: run `cargo build` first (or set INTEREST_NOW_BIN)")
        return 2
    # Stopped by a timeout: still stop the server and drop what we made (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:12]
    db_name = f"check_api_{run_id}"
    prefix = f"check-api-{run_id}."
    token = f"check-api-{uuid.uuid4().hex}"
    work = CACHE / "check-api"
    work.mkdir(parents=True, exist_ok=True)
    prune(work)
    server_log = work / f"serve-{run_id}.log"
    report_dir = work / f"report-{run_id}"

    env = dict(os.environ)
    env.update(
        {
            "KAFKA_TOPIC_PREFIX": prefix,
            "KAFKA_PARTITIONS": "2",
        }
    )
    log("bringing up PostgreSQL and the broker, creating topics (scripts/infra-up)")
    run([str(ROOT / "scripts" / "infra-up")], env, INFRA_TIMEOUT_S, "scripts/infra-up")

    db_url = ADMIN_DB_URL.rsplit("/", 1)[0] + f"/{db_name}"
    http_port, admin_port = free_port(), free_port()
    accounts = [("acct-1", "123456789"), ("acct-2", "50000000"), ("acct_3", "1000000000000")]
    env.update(
        {
            "DATABASE_URL": db_url,
            "KAFKA_BROKERS": BROKERS,
            "KAFKA_GROUP_ID": f"check-api-{run_id}",
            "HTTP_ADDR": f"127.0.0.1:{http_port}",
            "ADMIN_ADDR": f"127.0.0.1:{admin_port}",
            "API_TOKENS": token,
            "CLAIM_WAIT_MS": "5000",
            "RUST_LOG": "info,rdkafka=warn,sqlx=warn",
        }
    )
    server = None
    result = 1
    psql(f"CREATE DATABASE {db_name}")
    try:
        log(f"database {db_name}: migrate, import examples/plans.json")
        run([str(BIN), "migrate"], env, 120, "interest-now migrate")
        run([str(BIN), "plans", "import", "examples/plans.json"], env, 60, "interest-now plans import")

        log(f"starting serve --role all on 127.0.0.1:{http_port} (admin {admin_port}; log {server_log})")
        with open(server_log, "wb") as out:
            server = subprocess.Popen(
                [str(BIN), "serve", "--role", "all"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        ready = f"http://127.0.0.1:{admin_port}/readyz"
        wait_until("/readyz", READY_TIMEOUT_S, lambda: http_get(ready) == 200, server)

        produce_snapshots(prefix, accounts)
        base = f"http://127.0.0.1:{http_port}"
        for account, _ in accounts:
            url = f"{base}/v1/accounts/{account}/interest"
            wait_until(f"account {account}", ACCOUNTS_TIMEOUT_S, lambda u=url: http_get(u, token) == 200, server)
        claim_ids = seed_claims(base, token, db_url, [a for a, _ in accounts])
        log(
            f"{len(accounts)} accounts and {len(claim_ids)} claims ready after "
            f"{time.monotonic() - started:.0f}s; running schemathesis"
        )

        st_env = dict(env)
        st_env["SCHEMATHESIS_HOOKS"] = str(Path(__file__).resolve())
        st_env[ACCOUNTS_ENV] = ",".join(a for a, _ in accounts)
        st_env[CLAIMS_ENV] = ",".join(claim_ids)
        cmd = schemathesis_cmd(base, token, report_dir)
        # Run from the cache: schemathesis keeps a .schemathesis/ directory in its working directory.
        proc = subprocess.run(cmd, env=st_env, cwd=work, timeout=SCHEMATHESIS_MAX_TIME_S + 90)
        result = proc.returncode
        if server.poll() is not None:
            log(f"the server exited (code {server.returncode}) during the run")
            result = result or 1
    except subprocess.TimeoutExpired as e:
        log(f"timed out: {e}")
        result = 1
    finally:
        if server is not None:
            stop(server)
            if result != 0:
                tail = server_log.read_text(errors="replace").splitlines()[-30:]
                log("last lines of the server log:\n" + "\n".join(tail))
        try:
            psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        except SystemExit as e:
            log(str(e))
        delete_topics(prefix)

    elapsed = time.monotonic() - started
    if result == 0:
        print(f"check-api: OK: schemathesis found no failure ({', '.join(CHECKS)}); {elapsed:.0f}s")
    else:
        print(f"check-api: FAILED: schemathesis exit {result} (JUnit report in {report_dir}); {elapsed:.0f}s")
    return 0 if result == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
