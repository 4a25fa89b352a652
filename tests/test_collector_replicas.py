"""Several `observer serve` replicas on one PostgreSQL: the spans of each request (the app's span with the
user, the GenAI call span, the engine's span) go to DIFFERENT replicas, in random order, concurrently,
with re-sends, and one replica is killed with SIGKILL and restarted mid-stream while its senders retry.

Every request must end as exactly one row with the right user, model and tokens, and the usage
counters summed over every replica incarnation must equal the requests sent. A killed process cannot
be scraped, so the kill is made exact through the database: the test locks the requests table (every
replica's counting transaction then waits), waits for counts already committed to reach the victim's
counters, scrapes the victim, kills it and releases the lock. What the victim had counted is then
exactly what it exported; what it was about to count dies with its transaction and another
replica counts it. Counting is decided in the store (FOR UPDATE SKIP LOCKED + a counted flag), so the
sum is N only if no row is counted twice and none is lost."""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections import Counter

import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from support import Process, observer_cmd, scrape, wait_http

from observer.netutil import free_port

pytestmark = pytest.mark.integration

MODELS = ("acme/chat-8b", "acme/chat-70b")
DEPARTMENTS = ("legal", "sales", "eng")
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_requests(n: int) -> tuple[list[list[tuple[str, Span]]], list[dict]]:
    """For each request its three spans (as (service, span)) and the row it must become. Every fourth
    request's engine span is in a trace of its own (a gateway that did not forward traceparent),
    joined by the OpenAI response id."""
    t0 = time.time_ns() - 30_000_000_000
    requests, expected = [], []
    for i in range(n):
        trace, app_id, call_id, engine_id = os.urandom(16), os.urandom(8), os.urandom(8), os.urandom(8)
        response_id = f"chatcmpl-{trace.hex()}"
        user, dept, model = f"user-{i % 7}", DEPARTMENTS[i % 3], MODELS[i % 2]
        inp, out = 100 + i, 10 + i % 13
        app = Span(trace_id=trace, span_id=app_id, name="POST /ask", kind=Span.SPAN_KIND_SERVER)
        app.attributes.extend([_kv("user.id", user), _kv("department", dept)])
        call = Span(
            trace_id=trace,
            span_id=call_id,
            parent_span_id=app_id,
            name=f"chat {model}",
            kind=Span.SPAN_KIND_CLIENT,
        )
        call.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.request.model", model),
                _kv("gen_ai.response.id", response_id),
            ]
        )
        separate = i % 4 == 0
        engine = Span(
            trace_id=os.urandom(16) if separate else trace,
            span_id=engine_id,
            parent_span_id=b"" if separate else call_id,
            name="llm_request",
            kind=Span.SPAN_KIND_SERVER,
        )
        engine.attributes.extend(
            [
                _kv("gen_ai.request.id", response_id),
                _kv("gen_ai.usage.prompt_tokens", inp),
                _kv("gen_ai.usage.completion_tokens", out),
                _kv("gen_ai.latency.time_to_first_token", 0.2),
                _kv("gen_ai.latency.e2e", 1.5),
            ]
        )
        for s, offset in ((app, 0), (call, 1), (engine, 2)):
            s.start_time_unix_nano = t0 + i * 1_000_000 + offset * 1_000
            s.end_time_unix_nano = s.start_time_unix_nano + 2_000_000_000 - offset * 1_000
        # One vLLM service per model (vLLM V1 spans carry no model: it is learned per service).
        engine_service = f"vllm-{model.split('-')[-1]}"
        requests.append([("assistant-app", app), ("assistant-app", call), (engine_service, engine)])
        expected.append(
            {
                "trace_id": trace.hex(),
                "request_key": call_id.hex(),
                "user_id": user,
                "department": dept,
                "model": model,
                "input_tokens": inp,
                "output_tokens": out,
            }
        )
    return requests, expected


def body(spans: list[tuple[str, Span]]) -> bytes:
    req = ExportTraceServiceRequest()
    for service in sorted({svc for svc, _ in spans}):
        rs = req.resource_spans.add()
        rs.resource.attributes.append(_kv("service.name", service))
        rs.scope_spans.add().spans.extend([s for svc, s in spans if svc == service])
    return req.SerializeToString()


def plan(requests: list[list[tuple[str, Span]]], replicas: int, rng: random.Random) -> list[list[bytes]]:
    """Export bodies per replica: the spans of one request land on different replicas (span k of
    request i on replica (i + k) mod R), shuffled, 15% sent twice (the copy to any replica), batched
    1-6 spans at a time."""
    per: list[list[tuple[str, Span]]] = [[] for _ in range(replicas)]
    for i, spans in enumerate(requests):
        for k, item in enumerate(spans):
            per[(i + k) % replicas].append(item)
            if rng.random() < 0.15:
                per[rng.randrange(replicas)].append(item)
    out = []
    for items in per:
        rng.shuffle(items)
        batches, pos = [], 0
        while pos < len(items):
            size = rng.randint(1, 6)
            batches.append(body(items[pos : pos + size]))
            pos += size
        out.append(batches)
    return out


class Replica:
    """One `observer serve` on a fixed port, so it can be killed and restarted under its senders."""

    def __init__(self, db_url: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db_url, self.env = db_url, env
        self.proc: Process | None = None
        self.start()

    def start(self) -> None:
        cmd = observer_cmd("serve", "--listen", f"127.0.0.1:{self.port}", "--db", self.db_url)
        self.proc = Process(cmd, "replica", env=self.env)
        try:
            wait_http(self.base + "/healthz", timeout=60, proc=self.proc.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{self.proc.output()[-3000:]}") from None

    def counted(self) -> tuple[Counter, float]:
        """Requests counted by this incarnation, by (model, department), and the tokens counted."""
        m = scrape(self.base + "/metrics")
        by: Counter = Counter()
        for labels, v in m.get("llm_usage_requests_total", {}).items():
            d = dict(labels)
            by[(d["model"], d["department"])] += v
        return by, sum(m.get("llm_usage_tokens_total", {}).values())


def send_all(base_of, batches: queue.Queue, deadline: float, sent: list[int]) -> None:
    """Post each body until it is accepted, retrying what failed as the OTLP exporter does (a killed
    replica refuses connections until it is back; a 503 says retry)."""
    with httpx.Client(timeout=10) as client:
        while True:
            try:
                payload = batches.get_nowait()
            except queue.Empty:
                return
            while True:
                assert time.monotonic() < deadline, "a batch was never accepted"
                try:
                    r = client.post(base_of() + "/v1/traces", content=payload, headers=PROTOBUF)
                    if r.status_code == 200:
                        sent[0] += 1
                        break
                    assert r.status_code in (429, 503), (r.status_code, r.text)
                except httpx.TransportError:
                    pass
                time.sleep(0.2)


def quiesce_and_kill(db_url: str, victim: Replica) -> tuple[Counter, float]:
    """Scrape the victim at a moment when no counting can commit anywhere, then SIGKILL it."""
    with psycopg.connect(db_url) as conn:
        conn.execute("LOCK TABLE requests IN EXCLUSIVE MODE")  # counting (FOR UPDATE) now waits
        time.sleep(0.5)  # counts committed before the lock reach the counters (in memory, at once)
        last_words = victim.counted()
        victim.proc.kill()
        conn.rollback()  # the victim's half-done counting transaction died with its connection
    victim.proc.stop()
    return last_words


def run_cluster(db_url: str, replicas: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    requests, expected = make_requests(n)
    env = {
        # Rows are counted once settled (all three spans in); the grace only covers lost halves.
        "OBSERVER_COLLECTOR__JOIN_GRACE_S": "300",
        "OBSERVER_COLLECTOR__MAX_CONCURRENT_INGESTS": "4",
    }
    nodes = [Replica(db_url, env) for _ in range(replicas)]
    plans = plan(requests, replicas, rng)
    total_batches = sum(len(p) for p in plans)
    deadline = time.monotonic() + 240
    sent = [0]
    threads = []
    for node, batches in zip(nodes, plans, strict=True):
        q: queue.Queue = queue.Queue()
        for b in batches:
            q.put(b)
        for _ in range(2):  # two exporters per replica: concurrent batches on every replica
            t = threading.Thread(target=send_all, args=(lambda node=node: node.base, q, deadline, sent))
            t.start()
            threads.append(t)
    dead: list[tuple[Counter, float]] = []
    try:
        while sent[0] < 0.4 * total_batches:  # mid-stream
            time.sleep(0.05)
        victim = nodes[rng.randrange(replicas)]
        until = time.monotonic() + 15  # kill it once it has counted some, so its counts matter
        while not sum(victim.counted()[0].values()) and time.monotonic() < until:
            time.sleep(0.2)
        dead.append(quiesce_and_kill(db_url, victim))
        time.sleep(1.0)  # its senders see refused connections and retry
        victim.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        assert sent[0] == total_batches and not any(t.is_alive() for t in threads)

        with psycopg.connect(db_url) as conn:
            while True:  # every request stored and counted by some replica
                total, uncounted = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE NOT counted) FROM requests"
                ).fetchone()
                if total == n and uncounted == 0:
                    break
                if time.monotonic() > deadline:
                    stuck = conn.execute("SELECT * FROM requests WHERE NOT counted").fetchall()
                    raise AssertionError(f"{total} rows, {uncounted} uncounted, {n} sent: {stuck}")
                time.sleep(0.25)
            rows = conn.execute(
                "SELECT trace_id, request_key, user_id, department, model, input_tokens, output_tokens, "
                "settled, counted FROM requests ORDER BY trace_id"
            ).fetchall()
        time.sleep(1.5)  # counts committed just now reach the counters
        alive = [node.counted() for node in nodes]
    finally:
        for node in nodes:
            node.proc.stop()

    columns = ("trace_id", "request_key", "user_id", "department", "model", "input_tokens", "output_tokens")
    want = sorted((*(e[c] for c in columns), True, True) for e in expected)
    got = sorted(tuple(r) for r in rows)
    assert got == want, ([r for r in got if r not in want][:5], [r for r in want if r not in got][:5])

    by_labels: Counter = Counter()
    tokens = 0.0
    for by, tok in dead + alive:
        by_labels.update(by)
        tokens += tok
    assert by_labels == Counter((e["model"], e["department"]) for e in expected)
    assert sum(by_labels.values()) == n  # summed over every incarnation: nothing twice, nothing lost
    assert tokens == sum(e["input_tokens"] + e["output_tokens"] for e in expected)
    # Every replica took part in counting (the store, not one leader, decides who counts a row).
    print(
        f"{replicas} replicas, {n} requests, {total_batches} batches: counted by the killed incarnation "
        f"{sum(dead[0][0].values()):.0f}, by the live ones {[sum(b.values()) for b, _ in alive]}"
    )


def test_two_replicas_split_halves_restart_and_count_exactly(pg_url):
    run_cluster(pg_url, replicas=2, n=240, seed=2)


def test_three_replicas_split_halves_restart_and_count_exactly(pg_url):
    run_cluster(pg_url, replicas=3, n=240, seed=3)
