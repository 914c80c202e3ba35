"""`python -m loomlm.bench serving`: latency and throughput of a running OpenAI-compatible HTTP server.

A client only: it measures loomlm's server, vLLM, SGLang or any other server of OpenAI's streaming
`/v1/completions` or `/v1/chat/completions`, with the metrics of SGLang's `bench_serving`. The prompts
(`serving_datasets.py`: `random`, `shared-prefix`, `chat`) are seeded; requests arrive all at once
(`--request-rate inf`) or as a Poisson process of `--request-rate` per second, at most `--concurrency`
in flight. After one warm-up request (a prompt of its own), every request is streamed (`stream: true`,
`stream_options.include_usage`), greedy, `max_tokens` = `--output-len` (exactly that many with
`--ignore-eos`).

Per request: TTFT = first chunk with text - send time; ITL = gaps between consecutive chunks with text;
e2e = end of the stream - send time; TPOT = (e2e - TTFT) / (output tokens - 1). Token counts come
from the stream's usage chunk (without one, output tokens are the chunks with text, and input tokens
are not reported). Prints a table; with `--json` the last line is one JSON object of all results, with
SGLang's key names (`request_throughput`, `mean_ttft_ms`, `median_itl_ms`, `p99_e2e_latency_ms`, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

import loomlm
from loomlm.bench.report import _cpu_model, text_table
from loomlm.bench.serving_datasets import DATASETS, Prompt, make_prompts

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
WARMUP = Prompt("Say hello.", ({"role": "user", "content": "Say hello."},))
WARMUP_TOKENS = 4


@dataclass
class RequestResult:
    """One request's timeline (`time.perf_counter()` seconds) and outcome."""

    start: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk with non-empty text
    end: float = 0.0
    usage_output_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        return len(self.chunk_times) if self.usage_output_tokens is None else self.usage_output_tokens

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens <= 1:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Stats:
    """Mean, median and 99th percentile, in milliseconds (None without samples)."""

    mean: float | None
    median: float | None
    p99: float | None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        if not seconds:
            return cls(None, None, None)
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        median, p99 = np.percentile(ms, [50, 99])
        return cls(float(ms.mean()), float(median), float(p99))


@dataclass(frozen=True)
class Metrics:
    completed: int
    failed: int
    duration: float
    total_input_tokens: int | None  # None when a successful request's stream had no prompt_tokens
    total_output_tokens: int
    ttft: Stats
    tpot: Stats
    itl: Stats
    e2e_latency: Stats
    concurrency: float  # sum of the successful requests' e2e over the duration

    def latencies(self) -> tuple[Stats, Stats, Stats, Stats]:
        return self.ttft, self.tpot, self.itl, self.e2e_latency

    def rate(self, amount: int | None) -> float | None:
        return None if amount is None or self.duration <= 0 else amount / self.duration

    def summary(self) -> dict[str, Any]:
        """Flat, with SGLang's `bench_serving` key names."""
        total = None if self.total_input_tokens is None else self.total_input_tokens + self.total_output_tokens
        out: dict[str, Any] = {
            "completed": self.completed,
            "failed": self.failed,
            "duration": self.duration,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.rate(self.completed),
            "input_throughput": self.rate(self.total_input_tokens),
            "output_throughput": self.rate(self.total_output_tokens),
            "total_throughput": self.rate(total),
            "concurrency": self.concurrency,
        }
        for name, stats in zip(("ttft", "tpot", "itl", "e2e_latency"), self.latencies()):
            for stat, value in asdict(stats).items():
                out[f"{stat}_{name}_ms"] = value
        return out


def compute_metrics(results: Sequence[RequestResult], duration: float) -> Metrics:
    done = [r for r in results if r.ok]
    prompt_tokens = [r.prompt_tokens for r in done]
    return Metrics(
        completed=len(done),
        failed=len(results) - len(done),
        duration=duration,
        total_input_tokens=None if None in prompt_tokens else sum(t or 0 for t in prompt_tokens),
        total_output_tokens=sum(r.output_tokens for r in done),
        ttft=Stats.of([r.ttft for r in done if r.ttft is not None]),
        tpot=Stats.of([r.tpot for r in done if r.tpot is not None]),
        itl=Stats.of([gap for r in done for gap in r.itls]),
        e2e_latency=Stats.of([r.e2e for r in done]),
        concurrency=sum(r.e2e for r in done) / duration if duration > 0 else 0.0,
    )


def arrival_offsets(n: int, rate: float, rng: random.Random) -> list[float]:
    """Send times after the start: all 0 at an infinite rate, else a Poisson process (first at 0)."""
    if math.isinf(rate):
        return [0.0] * n
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


def request_body(args: argparse.Namespace, model: str, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if args.endpoint == "chat":
        body["messages"] = list(prompt.messages)
    else:
        body["prompt"] = prompt.text
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True
    return body


def _error_message(error: Any) -> str:
    """The message of an OpenAI-shaped error (`{"error": {"message": ...}}`, or vLLM's and FastAPI's)."""
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("detail") or inner)
        return str(inner)
    return str(error)


def _chunk_text(event: dict[str, Any], endpoint: str) -> str:
    parts = []
    for choice in event.get("choices") or ():
        if endpoint == "chat":
            parts.append((choice.get("delta") or {}).get("content") or "")
        else:
            parts.append(choice.get("text") or "")
    return "".join(parts)


async def _stream(client: httpx.AsyncClient, endpoint: str, body: dict[str, Any], out: RequestResult) -> None:
    async with client.stream("POST", ENDPOINTS[endpoint], json=body) as resp:
        if not resp.is_success:
            raw = (await resp.aread()).decode("utf-8", "replace")
            try:
                message = _error_message(json.loads(raw))
            except ValueError:
                message = raw.strip()[:500]
            out.error = f"HTTP {resp.status_code}: {message}"
            return
        async for line in resp.aiter_lines():
            now = time.perf_counter()
            if not line.startswith("data:"):
                continue  # blank separators, comments, `event:` lines
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if not isinstance(event, dict):
                raise ValueError(f"stream event is not an object: {data[:200]}")
            if event.get("error") or event.get("object") == "error":
                out.error = f"stream error: {_error_message(event)}"
                return
            if _chunk_text(event, endpoint):
                out.chunk_times.append(now)
            if usage := event.get("usage"):
                out.usage_output_tokens = usage.get("completion_tokens", out.usage_output_tokens)
                out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
    out.error = "stream ended without data: [DONE]"


async def send_request(client: httpx.AsyncClient, endpoint: str, body: dict[str, Any], timeout: float) -> RequestResult:
    out = RequestResult(start=time.perf_counter())
    try:
        await asyncio.wait_for(_stream(client, endpoint, body, out), timeout)
    except asyncio.TimeoutError:
        out.error = f"timed out after {timeout:g} s"
    except Exception as exc:  # a failed request is a result, whatever failed
        cause = exc if str(exc) or exc.__context__ is None else exc.__context__  # httpx's are often blank
        out.error = f"{type(exc).__name__}: {cause}" if str(cause) else type(exc).__name__
    out.end = time.perf_counter()
    return out


async def run_requests(
    client: httpx.AsyncClient, args: argparse.Namespace, model: str, prompts: Sequence[Prompt]
) -> tuple[list[RequestResult], float]:
    """Every prompt's result, in prompt order, and the wall time from the first send to the last end."""
    offsets = arrival_offsets(len(prompts), args.request_rate, random.Random(args.seed))
    gate = asyncio.Semaphore(args.concurrency) if args.concurrency else contextlib.nullcontext()
    start = time.perf_counter()

    async def one(prompt: Prompt, offset: float) -> RequestResult:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            return await send_request(
                client, args.endpoint, request_body(args, model, prompt, args.output_len), args.timeout
            )

    results = await asyncio.gather(*(one(p, o) for p, o in zip(prompts, offsets)))
    return list(results), time.perf_counter() - start


async def _get_json(client: httpx.AsyncClient, path: str) -> Any:
    resp = await client.get(path)
    if not resp.is_success:
        raise RuntimeError(f"GET {path}: HTTP {resp.status_code}: {resp.text.strip()[:300]}")
    return resp.json()


async def first_model(client: httpx.AsyncClient) -> str:
    try:
        return str((await _get_json(client, "/v1/models"))["data"][0]["id"])
    except (httpx.HTTPError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise RuntimeError(f"no --model given and GET /v1/models named none ({type(exc).__name__}: {exc})") from exc


async def server_info(client: httpx.AsyncClient) -> dict[str, Any] | None:
    """loomlm's (and SGLang's) `GET /get_server_info`; None where the server has none."""
    try:
        info = await _get_json(client, "/get_server_info")
    except Exception:  # optional: any failure means no info
        return None
    return info if isinstance(info, dict) else None


@dataclass(frozen=True)
class BenchmarkRun:
    model: str
    server_info: dict[str, Any] | None
    results: list[RequestResult]
    duration: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def _client(args: argparse.Namespace) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    return httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=args.timeout, limits=limits)


async def benchmark(args: argparse.Namespace, prompts: Sequence[Prompt]) -> BenchmarkRun:
    async with _client(args) as client:
        model = args.model or await first_model(client)
        info = await server_info(client) if args.backend == "loomlm" else None
        _log(f"model {model}; warm-up request")
        warm = await send_request(client, args.endpoint, request_body(args, model, WARMUP, WARMUP_TOKENS), args.timeout)
        if not warm.ok:
            raise RuntimeError(f"the warm-up request failed: {warm.error}")
        load_before = os.getloadavg()
        results, duration = await run_requests(client, args, model, prompts)
        return BenchmarkRun(model, info, results, duration, load_before, os.getloadavg())


SUMMARY_ROWS = (  # label, key of Metrics.summary(), decimals (None: an integer)
    ("successful requests", "completed", None),
    ("failed requests", "failed", None),
    ("benchmark duration (s)", "duration", 2),
    ("total input tokens", "total_input_tokens", None),
    ("total output tokens", "total_output_tokens", None),
    ("request throughput (req/s)", "request_throughput", 2),
    ("input token throughput (tok/s)", "input_throughput", 1),
    ("output token throughput (tok/s)", "output_throughput", 1),
    ("total token throughput (tok/s)", "total_throughput", 1),
    ("concurrency achieved", "concurrency", 2),
)


def _fmt(value: float | None, digits: int | None = 2) -> str:
    return "-" if value is None else str(value) if digits is None else f"{value:.{digits}f}"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("json", "api_key")} | {"api_key": bool(args.api_key)}


def machine(run: BenchmarkRun) -> dict[str, Any]:
    """Facts about the client's machine and software (its load skews the client's own timings)."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hardware": f"{_cpu_model()}, {os.cpu_count()} logical cores",
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "loomlm": loomlm.__version__,
        "load_average_before": [round(x, 2) for x in run.load_before],
        "load_average_after": [round(x, 2) for x in run.load_after],
    }


def format_report(args: argparse.Namespace, run: BenchmarkRun, metrics: Metrics) -> str:
    m = metrics.summary()
    rows = [(label, _fmt(m[key], digits)) for label, key, digits in SUMMARY_ROWS]
    latency = [
        (label, _fmt(stats.mean), _fmt(stats.median), _fmt(stats.p99))
        for label, stats in zip(("TTFT", "TPOT", "ITL", "e2e latency"), metrics.latencies())
    ]
    facts = machine(run)
    parts = [
        text_table(("metric", "value"), rows),
        "",
        text_table(("latency", "mean ms", "p50 ms", "p99 ms"), latency),
        "",
        f"server {args.base_url}{ENDPOINTS[args.endpoint]}, model {run.model}",
        "settings: "
        + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in _settings(args).items()),
        f"client: {facts['hardware']}; load average (1m, 5m, 15m) {facts['load_average_before']} before, "
        f"{facts['load_average_after']} after",
    ]
    errors = collections.Counter(r.error for r in run.results if r.error)
    parts += [f"failed {n}x: {message}" for message, n in errors.most_common(5)]
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    """Floats rounded, infinities as "inf", NaN as None: strict JSON."""
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else None if math.isnan(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def json_summary(args: argparse.Namespace, run: BenchmarkRun, metrics: Metrics) -> dict[str, Any]:
    t0 = min((r.start for r in run.results), default=0.0)
    requests = [
        {
            "start_s": r.start - t0,
            "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens,
            "ttft_ms": _ms(r.ttft),
            "tpot_ms": _ms(r.tpot),
            "e2e_latency_ms": _ms(r.e2e),
            "error": r.error,
        }
        for r in run.results
    ]
    return _jsonable(
        {
            "backend": args.backend,
            "endpoint": ENDPOINTS[args.endpoint],
            "model": run.model,
            "dataset": args.dataset,
            **metrics.summary(),
            "errors": dict(collections.Counter(r.error for r in run.results if r.error)),
            "requests": requests,
            "args": _settings(args),
            "server_info": run.server_info,
            **machine(run),
        }
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loomlm.bench serving", description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True, help="the server's root, e.g. http://127.0.0.1:30000 (no /v1)")
    p.add_argument(
        "--backend", choices=("loomlm", "openai"), default="loomlm", help="loomlm: also GET /get_server_info"
    )
    p.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="completions")
    p.add_argument("--model", default=None, help="model name in the requests (default: the first of GET /v1/models)")
    p.add_argument(
        "--request-rate", type=float, default=math.inf, help="requests/s, Poisson arrivals (default: inf, all at once)"
    )
    p.add_argument("--concurrency", type=int, default=None, help="most requests in flight (default: unlimited)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--dataset", choices=DATASETS, default="random")
    p.add_argument("--input-len", type=int, default=128, help="random: words per prompt")
    p.add_argument("--output-len", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--prefix-len", type=int, default=512, help="shared-prefix: words of each group's prefix")
    p.add_argument("--num-groups", type=int, default=4, help="shared-prefix: number of distinct prefixes")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompts and the arrival times")
    p.add_argument("--ignore-eos", action="store_true", help='send "ignore_eos": true (exactly max_tokens each)')
    p.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for name in ("num_prompts", "input_len", "output_len", "prefix_len", "num_groups", "request_rate", "timeout"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.concurrency is not None and args.concurrency <= 0:
        raise ValueError("--concurrency must be positive")
    if not args.base_url.startswith(("http://", "https://")):
        raise ValueError(f"--base-url must start with http:// or https://, got {args.base_url!r}")
    args.base_url = args.base_url.rstrip("/").removesuffix("/v1")


def _log(message: str) -> None:
    print(f"[bench serving] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
    except ValueError as exc:
        print(f"python -m loomlm.bench serving: {exc}", file=sys.stderr)
        return 2
    prompts = make_prompts(
        args.dataset,
        args.num_prompts,
        input_len=args.input_len,
        prefix_len=args.prefix_len,
        num_groups=args.num_groups,
        seed=args.seed,
    )
    _log(
        f"{args.num_prompts} {args.dataset} prompts -> max {args.output_len} tokens to {args.base_url}"
        f"{ENDPOINTS[args.endpoint]}, rate {args.request_rate:g}/s, concurrency {args.concurrency or 'unlimited'}"
    )
    try:
        run = asyncio.run(benchmark(args, prompts))
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"python -m loomlm.bench serving: {exc}", file=sys.stderr)
        return 1
    metrics = compute_metrics(run.results, run.duration)
    print(format_report(args, run, metrics))
    if args.json:
        print(json.dumps(json_summary(args, run, metrics)))
    return 0 if metrics.completed else 1


if __name__ == "__main__":
    sys.exit(main())
