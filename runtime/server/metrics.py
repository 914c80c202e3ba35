"""`GET /metrics`: Prometheus metrics with `loomlm:` names and vLLM's / SGLang's meanings.

Per request (observed by the routes when a request finishes): `time_to_first_token_seconds` and
`inter_token_latency_seconds` (streamed requests: when each chunk with new tokens left the engine),
`e2e_request_latency_seconds`, `queue_time_seconds` (queued to first scheduled, the engine's clock);
counters of prompt, generation and cached prompt tokens and of finished
requests by finish reason; HTTP responses by route and status (the guard middleware). Read from the
engine at scrape time: running and waiting requests, KV token usage, the prefix cache's hit rate,
evicted tokens and retracted requests. Each app has its own registry (two servers in one process do
not share counts).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
CONTENT_TYPE = CONTENT_TYPE_LATEST
logger = logging.getLogger("loomlm.server")


class ServerMetrics:
    def __init__(self, engine: Any, log_requests: bool = False):
        self.engine = engine
        self.log_requests = log_requests
        self.registry = registry = CollectorRegistry()

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"loomlm:{name}", doc, buckets=_LATENCY_BUCKETS, registry=registry)

        self.ttft = histogram("time_to_first_token_seconds", "Time to the first output token (streamed requests)")
        self.itl = histogram("inter_token_latency_seconds", "Time between output chunks (streamed requests)")
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the last output token")
        self.queue = histogram("queue_time_seconds", "Time from queued in the engine to first scheduled")
        self.prompt_tokens = Counter("loomlm:prompt_tokens", "Prompt tokens of finished requests", registry=registry)
        self.generation_tokens = Counter(
            "loomlm:generation_tokens", "Output tokens of finished requests", registry=registry
        )
        self.cached_tokens = Counter(
            "loomlm:cached_tokens", "Prompt tokens served from the prefix cache", registry=registry
        )
        self.finished = Counter(
            "loomlm:request_success", "Finished requests by finish reason", ["finished_reason"], registry=registry
        )
        self.http = Counter(
            "loomlm:http_requests", "HTTP responses by route and status", ["route", "status"], registry=registry
        )
        self._gauges = {
            key: Gauge(f"loomlm:{name}", doc, registry=registry)
            for key, name, doc in (
                ("running_requests", "num_running_reqs", "Requests running"),
                ("waiting_requests", "num_queue_reqs", "Requests waiting"),
                ("token_usage", "token_usage", "Share of the KV pool in use"),
                ("cache_hit_rate", "cache_hit_rate", "Share of prompt tokens served from the prefix cache"),
                ("evicted_tokens", "evicted_tokens", "Cached tokens evicted so far"),
                ("retracted_requests", "retracted_requests", "Running requests sent back to the queue so far"),
                ("spec_accept_length", "spec_accept_length", "Speculative decoding: tokens per request per verify"),
            )
        }

    def request_done(self, meta: dict[str, Any], started: float, chunk_times: list[float] | None = None) -> None:
        """Record one finished request (`chunk_times`: when each chunk with new tokens was sent)."""
        now = time.perf_counter()
        self.e2e.observe(now - started)
        if meta.get("queue_time") is not None:
            self.queue.observe(meta["queue_time"])
        if chunk_times:
            self.ttft.observe(chunk_times[0] - started)
            for a, b in zip(chunk_times, chunk_times[1:]):
                self.itl.observe(b - a)
        self.prompt_tokens.inc(meta.get("prompt_tokens", 0))
        self.generation_tokens.inc(meta.get("completion_tokens", 0))
        self.cached_tokens.inc(meta.get("cached_tokens", 0))
        reason = (meta.get("finish_reason") or {}).get("type", "unknown")
        self.finished.labels(finished_reason=reason).inc()
        if self.log_requests:
            queued = meta.get("queue_time")
            logger.info(
                "request %s: prompt %d, cached %d, output %d tokens; queued %s, %.1f ms in all; finish %s",
                meta.get("id"),
                meta.get("prompt_tokens", 0),
                meta.get("cached_tokens", 0),
                meta.get("completion_tokens", 0),
                "-" if queued is None else f"{queued * 1e3:.1f} ms",
                (now - started) * 1e3,
                reason,
            )

    async def render(self) -> bytes:
        stats = await run_in_threadpool(self.engine.get_stats)
        for key, gauge in self._gauges.items():
            gauge.set(stats[key])
        return generate_latest(self.registry)
