#!/usr/bin/env python3
"""Smoke test of the local Kafka-protocol broker with a current Kafka client.

Checks what interest-now relies on, against the broker that scripts/infra-up
started, using confluent-kafka (librdkafka 2.12.1, the same librdkafka that
the Rust crate rdkafka 0.38 / rdkafka-sys 4.10 bundles):

  1. metadata: the 4 topics exist with KAFKA_PARTITIONS (12) partitions
  2. idempotent produce (acks=all, murmur2_random) with headers, consumed back
     intact; a key lands on the same partition number in two topics, and that
     partition is Kafka's murmur2 partition (what the Java client would pick)
  3. consumer group, cooperative-sticky, two topics: two members split the
     partitions; when one closes the other gets them all
  4. manual offset commit; committed() after re-join; no redelivery
  5. transactions (transactional.id): reported only
  6. auto topic creation by a producer: reported only
  7. (--restart) broker restart via infra-down + infra-up: topics recreated,
     data/offsets lost, and whether live clients recover: reported

Usage:
  scripts/broker-smoke.py [--restart]

The script re-executes itself with $INTEREST_NOW_CACHE/venv/bin/python,
creating that venv (pip install confluent-kafka) on first use.
Exit status: 0 when every PASS/FAIL check passed (INFO lines never fail).
"""

import os
import subprocess
import sys
import time
import uuid

CACHE = os.environ.get("INTEREST_NOW_CACHE", os.path.expanduser("~/.cache/interest-now"))
VENV = os.path.join(CACHE, "venv")
VENV_PY = os.path.join(VENV, "bin", "python")
CLIENT_REQUIREMENT = "confluent-kafka==2.12.1"  # bundles librdkafka 2.12.1, as rdkafka-sys 4.10.0+2.12.1


def ensure_client():
    """Import confluent_kafka, re-executing under the cache venv if needed."""
    try:
        import confluent_kafka  # noqa: F401

        return
    except ImportError:
        pass
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        if not os.path.exists(VENV_PY):
            print(f"[smoke] creating {VENV} with {CLIENT_REQUIREMENT}", file=sys.stderr)
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
        if subprocess.call([VENV_PY, "-c", "import confluent_kafka"], stderr=subprocess.DEVNULL) != 0:
            subprocess.check_call([VENV_PY, "-m", "pip", "install", "-q", CLIENT_REQUIREMENT])
        os.execv(VENV_PY, [VENV_PY, *sys.argv])
    sys.exit(f"cannot import confluent_kafka even in {VENV}")


ensure_client()

from confluent_kafka import (  # noqa: E402
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
    libversion,
)
from confluent_kafka.admin import AdminClient  # noqa: E402

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
PORT = os.environ.get("KAFKA_PORT", "9092")
BROKERS = os.environ.get("KAFKA_BROKERS", f"127.0.0.1:{PORT}")
PARTITIONS = int(os.environ.get("KAFKA_PARTITIONS", "12"))
PREFIX = os.environ.get("KAFKA_TOPIC_PREFIX", "")
TOPICS = [PREFIX + t for t in ("balance-snapshots", "balance-snapshots.dlq", "interest-claims", "interest-payouts")]
TOPIC_A, TOPIC_B = PREFIX + "balance-snapshots", PREFIX + "interest-claims"

RUN = uuid.uuid4().hex[:8]
RESULTS = []  # (status, name, detail)
T0 = time.monotonic()


def ts():
    return f"{time.monotonic() - T0:7.2f}s"


def note(msg):
    print(f"  [{ts()}] {msg}", flush=True)


def record(status, name, detail=""):
    RESULTS.append((status, name, detail))
    print(f"{status}: {name}{' - ' + detail if detail else ''}", flush=True)


def base_conf(**extra):
    conf = {
        "bootstrap.servers": BROKERS,
        "client.id": f"broker-smoke-{RUN}",
        # Don't let a producer's metadata request re-create a topic with the
        # broker's auto-create default of 4 partitions (see check 6).
        "allow.auto.create.topics": False,
    }
    conf.update(extra)
    return conf


def producer_conf(**extra):
    return base_conf(
        **{
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            **extra,
        }
    )


def consumer_conf(group, **extra):
    return base_conf(
        **{
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as in the Java client's Utils.murmur2)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[i * 4 : i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest, tail = length % 4, length & ~3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def kafka_partition(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n


def wait_until(pred, timeout, step=None):
    """Call step() (e.g. poll) until pred() is true or timeout; returns pred()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if step:
            step()
        else:
            time.sleep(0.1)
    return pred()


def produce_batch(producer, topic, keys, tag):
    """Produce one message per key with headers; returns {key: (partition, offset)}."""
    delivered, errors = {}, []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            delivered[msg.key().decode()] = (msg.partition(), msg.offset())

    for key in keys:
        producer.produce(
            topic,
            key=key.encode(),
            value=f"{tag}:{key}".encode(),
            headers=[("run-id", RUN.encode()), ("content-type", b"application/json"), ("empty", b"")],
            on_delivery=on_delivery,
        )
    left = producer.flush(30)
    if errors or left:
        raise RuntimeError(f"delivery errors={errors} undelivered={left}")
    return delivered


# -----------------------------------------------------------------------------


def check_metadata():
    admin = AdminClient(base_conf())
    started = time.monotonic()
    md = admin.list_topics(timeout=15)
    note(f"first metadata round trip {time.monotonic() - started:.2f}s; broker(s): "
         + ", ".join(f"{b.id}@{b.host}:{b.port}" for b in md.brokers.values()))
    bad = []
    for t in TOPICS:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            bad.append(f"{t}: missing ({tm.error if tm else 'absent'})")
        elif len(tm.partitions) != PARTITIONS:
            bad.append(f"{t}: {len(tm.partitions)} partitions")
    if bad:
        record("FAIL", "1 metadata: topics and partition counts", "; ".join(bad))
    else:
        record("PASS", "1 metadata: topics and partition counts", f"{len(TOPICS)} topics x {PARTITIONS} partitions")


def check_produce_consume():
    keys = [f"account-{i}" for i in range(24)]
    producer = Producer(producer_conf())
    started = time.monotonic()
    sent_a = produce_batch(producer, TOPIC_A, keys, f"{RUN}-a")
    note(f"first idempotent produce+flush of {len(keys)} msgs {time.monotonic() - started:.2f}s")
    sent_b = produce_batch(producer, TOPIC_B, keys, f"{RUN}-b")

    problems = []
    same = all(sent_a[k][0] == sent_b[k][0] for k in keys)
    if not same:
        problems.append("a key went to different partitions in the two topics")
    java = [k for k in keys if sent_a[k][0] != kafka_partition(k.encode(), PARTITIONS)]
    if java:
        problems.append(f"{len(java)} keys not on murmur2 partition (e.g. {java[0]})")
    used = len({p for p, _ in sent_a.values()})
    note(f"{len(keys)} keys spread over {used} partitions")

    # Read them back by partition/offset, headers included.
    consumer = Consumer(consumer_conf(f"smoke-read-{RUN}"))
    want = {(TOPIC_A, *sent_a[k]): k for k in keys} | {(TOPIC_B, *sent_b[k]): k for k in keys}
    starts = {}
    for (t, p, o) in want:
        starts[(t, p)] = min(o, starts.get((t, p), o))
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
    got = {}

    def step():
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            return
        k = (msg.topic(), msg.partition(), msg.offset())
        if k in want:
            got[k] = msg

    wait_until(lambda: len(got) == len(want), 30, step)
    consumer.close()
    if len(got) != len(want):
        problems.append(f"read back {len(got)}/{len(want)} messages")
    expected_headers = [("run-id", RUN.encode()), ("content-type", b"application/json"), ("empty", b"")]
    for (t, p, o), msg in got.items():
        key = want[(t, p, o)]
        tag = f"{RUN}-a" if t == TOPIC_A else f"{RUN}-b"
        if msg.key() != key.encode() or msg.value() != f"{tag}:{key}".encode():
            problems.append(f"{t}/{p}@{o}: key/value mismatch")
            break
        if msg.headers() != expected_headers:
            problems.append(f"{t}/{p}@{o}: headers {msg.headers()}")
            break
    producer.flush(5)
    name = "2 idempotent produce (acks=all, murmur2_random) + headers round trip + co-partitioning"
    if problems:
        record("FAIL", name, "; ".join(problems))
    else:
        record("PASS", name, f"{len(want)} msgs, headers intact, same partition per key in both topics, = Java murmur2")
    return sent_a


def check_compression():
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    ok, bad = [], []
    consumer = Consumer(consumer_conf(f"smoke-codec-{RUN}"))
    for codec in codecs:
        try:
            producer = Producer(producer_conf(**{"compression.type": codec}))
            sent = produce_batch(producer, TOPIC_B, [f"codec-{codec}-{i}" for i in range(5)], codec)
            want = {(p, o) for p, o in sent.values()}
            starts = {}
            for p, o in want:
                starts[p] = min(o, starts.get(p, o))
            consumer.assign([TopicPartition(TOPIC_B, p, o) for p, o in starts.items()])
            got = set()

            def step():
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error() and (msg.partition(), msg.offset()) in want:
                    if msg.value() == f"{codec}:{msg.key().decode()}".encode():
                        got.add((msg.partition(), msg.offset()))

            (ok if wait_until(lambda: got >= want, 20, step) else bad).append(codec)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{codec} ({e})")
    consumer.close()
    name = "2b compressed produce/consume"
    record("FAIL" if bad else "PASS", name, f"ok: {', '.join(ok)}" + (f"; failed: {', '.join(bad)}" if bad else ""))


def check_cooperative_group():
    group = f"smoke-coop-{RUN}"
    total = 2 * PARTITIONS
    events = []

    def cbs(name):
        def on_assign(c, parts):
            events.append(f"{ts()} {name} +{len(parts)}")

        def on_revoke(c, parts):
            events.append(f"{ts()} {name} -{len(parts)}")

        return {"on_assign": on_assign, "on_revoke": on_revoke}

    conf = dict(**{"partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 10000})
    c1 = Consumer(consumer_conf(group, **conf))
    c2 = Consumer(consumer_conf(group, **conf))
    members = [c1]

    def step():
        for c in members:
            c.poll(0.1)

    def parts(c):
        return {(tp.topic, tp.partition) for tp in c.assignment()}

    problems, detail = [], []
    started = time.monotonic()
    c1.subscribe([TOPIC_A, TOPIC_B], **cbs("c1"))
    if wait_until(lambda: len(parts(c1)) == total, 60, step):
        detail.append(f"c1 alone got {total} in {time.monotonic() - started:.1f}s")
    else:
        problems.append(f"c1 alone has {len(parts(c1))}/{total}")

    started = time.monotonic()
    members.append(c2)
    c2.subscribe([TOPIC_A, TOPIC_B], **cbs("c2"))

    def split():
        a, b = parts(c1), parts(c2)
        return a and b and not (a & b) and len(a | b) == total

    if wait_until(split, 90, step):
        detail.append(f"split {len(parts(c1))}/{len(parts(c2))} in {time.monotonic() - started:.1f}s")
        # The assignor runs in the client (group leader), not in the broker.
        for label, c in (("c1", c1), ("c2", c2)):
            per_topic = {t: sorted(p for tt, p in parts(c) if tt == t) for t in (TOPIC_A, TOPIC_B)}
            note(f"{label}: " + "; ".join(f"{t} {ps}" for t, ps in per_topic.items()))
    else:
        problems.append(f"no split: c1={len(parts(c1))} c2={len(parts(c2))}")

    started = time.monotonic()
    members.remove(c2)
    c2.close()
    if wait_until(lambda: len(parts(c1)) == total, 60, step):
        detail.append(f"after c2 closed c1 got all {total} in {time.monotonic() - started:.1f}s")
    else:
        problems.append(f"after c2 closed c1 has {len(parts(c1))}/{total}")
    c1.close()
    note("rebalance events: " + ", ".join(events))
    name = "3 consumer group cooperative-sticky, 2 topics, 2 members"
    record("FAIL" if problems else "PASS", name, "; ".join(problems + detail))


def check_commit(sent_a):
    group = f"smoke-commit-{RUN}"
    problems = []
    # First member: read this run's messages on TOPIC_A, commit manually.
    c = Consumer(consumer_conf(group))
    c.subscribe([TOPIC_A])
    mine, last = set(), {}

    def step():
        msg = c.poll(0.5)
        if msg is None or msg.error():
            return
        last[msg.partition()] = msg.offset()
        if dict(msg.headers() or []).get("run-id") == RUN.encode():
            mine.add(msg.key().decode())

    started = time.monotonic()
    if not wait_until(lambda: len(mine) == len(sent_a), 60, step):
        problems.append(f"first member read {len(mine)}/{len(sent_a)}")
    note(f"first member joined and read {len(mine)} msgs in {time.monotonic() - started:.1f}s")
    offsets = [TopicPartition(TOPIC_A, p, o + 1) for p, o in sorted(last.items())]
    c.commit(offsets=offsets, asynchronous=False)
    c.close()

    # Second member of the same group: committed() after re-join, no redelivery.
    c = Consumer(consumer_conf(group))
    c.subscribe([TOPIC_A])
    started = time.monotonic()
    if not wait_until(lambda: len(c.assignment()) == PARTITIONS, 60, lambda: c.poll(0.2)):
        problems.append(f"re-join assignment {len(c.assignment())}/{PARTITIONS}")
    note(f"re-joined in {time.monotonic() - started:.1f}s")
    committed = c.committed([TopicPartition(TOPIC_A, p) for p in range(PARTITIONS)], timeout=10)
    got = {tp.partition: tp.offset for tp in committed if tp.offset != OFFSET_INVALID}
    want = {tp.partition: tp.offset for tp in offsets}
    if got != want:
        problems.append(f"committed() {got} != {want}")

    # A fresh message must be the only one delivered (consumption resumes at the commit).
    producer = Producer(producer_conf())
    seen = []

    def step2():
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            seen.append(msg.key().decode())

    for _ in range(4):  # let the member settle into fetching before the latency probe
        step2()
    started = time.monotonic()
    produce_batch(producer, TOPIC_A, [f"after-commit-{RUN}"], f"{RUN}-c")
    wait_until(lambda: f"after-commit-{RUN}" in seen, 20, step2)
    note(f"produce-to-group-consumer latency {time.monotonic() - started:.2f}s")
    c.close()
    if seen != [f"after-commit-{RUN}"]:
        problems.append(f"after re-join got {seen[:5]}{'...' if len(seen) > 5 else ''}")
    name = "4 manual commit + committed() after re-join, no redelivery"
    record("FAIL" if problems else "PASS", name, "; ".join(problems) or f"{len(want)} partition offsets committed and fetched")


def check_transactions():
    producer = Producer(producer_conf(**{"transactional.id": f"smoke-tx-{RUN}"}))
    name = "5 transactions (transactional.id)"
    try:
        producer.init_transactions(15)
        producer.begin_transaction()
        producer.produce(TOPIC_A, key=b"tx", value=RUN.encode())
        producer.commit_transaction(15)
        record("INFO", name, "supported: init/begin/commit succeeded")
    except KafkaException as e:
        err = e.args[0]
        record("INFO", name, f"NOT supported: {err.name()}: {err.str()}")


def check_auto_create():
    admin = AdminClient(base_conf())
    name = "6 auto topic creation by a producer"
    details = []
    for allow in (True, False):
        topic = f"smoke-autocreate-{'on' if allow else 'off'}-{RUN}"
        p = Producer(producer_conf(**{"allow.auto.create.topics": allow, "message.timeout.ms": 5000}))
        errs = []
        p.produce(topic, key=b"k", value=b"v", on_delivery=lambda err, msg: errs.append(err))
        p.flush(10)
        md = admin.list_topics(timeout=10)
        tm = md.topics.get(topic)
        n = len(tm.partitions) if tm is not None and tm.error is None else 0
        outcome = f"created with {n} partitions" if n else "not created"
        delivery = errs[0].name() if errs and errs[0] else "delivered"
        details.append(f"allow.auto.create.topics={str(allow).lower()}: {outcome}, produce {delivery}")
        if n:
            for f in admin.delete_topics([topic], operation_timeout=10).values():
                try:
                    f.result()
                except KafkaException as e:
                    details.append(f"delete failed: {e}")
    record("INFO", name, "; ".join(details))


def check_restart():
    """Restart the broker (memory engine) while clients are connected."""
    name = "7 broker restart (infra-down + infra-up)"
    group = f"smoke-restart-{RUN}"
    live_errors = []
    producer = Producer(producer_conf(error_cb=lambda e: live_errors.append(e)))
    produce_batch(producer, TOPIC_A, ["before-restart"], RUN)
    consumer = Consumer(consumer_conf(group, **{"partition.assignment.strategy": "cooperative-sticky"}))
    consumer.subscribe([TOPIC_A])
    wait_until(lambda: len(consumer.assignment()) == PARTITIONS, 60, lambda: consumer.poll(0.2))
    # Read everything, then commit where we are.
    while consumer.poll(1.0) is not None:
        pass
    consumer.commit(asynchronous=False)

    started = time.monotonic()
    subprocess.run([os.path.join(SCRIPTS, "infra-down")], check=True, stdout=subprocess.DEVNULL)
    up = subprocess.run([os.path.join(SCRIPTS, "infra-up")], check=True, capture_output=True, text=True)
    note(f"infra-down + infra-up took {time.monotonic() - started:.1f}s")
    warnings = [line for line in up.stderr.splitlines() if "WARNING" in line]

    problems, info = [], []
    admin = AdminClient(base_conf())
    md = admin.list_topics(timeout=15)
    counts = {t: (len(md.topics[t].partitions) if t in md.topics else 0) for t in TOPICS}
    if any(n != PARTITIONS for n in counts.values()) or warnings:
        problems.append(f"topics after restart {counts} {warnings}")
    else:
        info.append(f"infra-up recreated {len(TOPICS)} topics x {PARTITIONS}")

    # Data: every partition of TOPIC_A is empty again.
    probe = Consumer(consumer_conf(f"smoke-probe-{RUN}"))
    hw = sum(probe.get_watermark_offsets(TopicPartition(TOPIC_A, p), timeout=10)[1] for p in range(PARTITIONS))
    committed = probe.committed([TopicPartition(TOPIC_A, p) for p in range(PARTITIONS)], timeout=10)
    probe.close()
    info.append(f"messages in {TOPIC_A} after restart: {hw} (data {'lost' if hw == 0 else 'kept'})")
    # committed offsets of a group that existed before the restart (read via another client)
    fresh = Consumer(consumer_conf(group))
    committed = fresh.committed([TopicPartition(TOPIC_A, p) for p in range(PARTITIONS)], timeout=10)
    fresh.close()
    kept = [tp for tp in committed if tp.offset >= 0]
    info.append(f"group offsets {'kept' if kept else 'lost'}")

    # Live clients. A fresh producer writes one message; does the group member
    # that was connected before the restart receive it?
    fresh_producer = Producer(producer_conf())
    produce_batch(fresh_producer, TOPIC_A, ["after-restart-fresh"], RUN)
    info.append("fresh idempotent producer delivers")
    got = []

    def step():
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error() and msg.key() == b"after-restart-fresh":
            got.append(msg)

    started = time.monotonic()
    if wait_until(lambda: bool(got), 60, step):
        info.append(f"live group consumer got it after {time.monotonic() - started:.1f}s")
    else:
        info.append(f"live group consumer did NOT get it in 60s (assignment {len(consumer.assignment())})")

    # Does the idempotent producer that was connected before the restart still deliver?
    try:
        delivered = produce_batch(producer, TOPIC_A, ["after-restart-live"], RUN)
        info.append(f"live idempotent producer delivers (p{delivered['after-restart-live'][0]})")
    except Exception:  # noqa: BLE001
        info.append("live idempotent producer does NOT deliver within 30s (UNKNOWN_PRODUCER_ID loop, see docs/BROKER.md)")
    fatal = [e for e in live_errors if e.fatal()]
    if fatal:
        info.append(f"producer fatal error: {fatal[0].name()}")
    consumer.close()
    # Drop the stuck message instead of retrying it until message.timeout.ms.
    producer.purge()
    producer.flush(1)
    if problems:
        record("FAIL", name, "; ".join(problems + info))
    else:
        record("PASS", name, "; ".join(info))


def main():
    restart = "--restart" in sys.argv[1:]
    print(f"broker-smoke: brokers={BROKERS} client=confluent-kafka/librdkafka {libversion()[0]} run={RUN}", flush=True)
    state = {}
    checks = [
        ("1", check_metadata),
        ("2", lambda: state.update(sent_a=check_produce_consume())),
        ("2b", check_compression),
        ("3", check_cooperative_group),
        ("4", lambda: check_commit(state["sent_a"])),
        ("5", check_transactions),
        ("6", check_auto_create),
    ]
    if restart:
        checks.append(("7", check_restart))
    for number, fn in checks:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            record("FAIL", f"{number} (exception)", f"{type(e).__name__}: {e}")
    passed = sum(1 for s, _, _ in RESULTS if s == "PASS")
    failed = sum(1 for s, _, _ in RESULTS if s == "FAIL")
    print(f"broker-smoke: {passed} passed, {failed} failed, {len(RESULTS) - passed - failed} info")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
