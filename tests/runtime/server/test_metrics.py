"""`GET /metrics` after a known set of requests: exact counts, parsed with prometheus-client's parser."""

from __future__ import annotations

import logging

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.server.served import Served


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_tokens_and_statuses_exactly(engine, caplog):
    caplog.set_level(logging.INFO, logger="loomlm.server")
    body = {"prompt": "Hello there", "max_tokens": 5, "temperature": 0}
    with Served(engine) as server, httpx.Client(base_url=server.url) as http:
        plain = [http.post("/v1/completions", json=body).json()["usage"] for _ in range(2)]
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as streamed:
            assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
        native = http.post("/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 3}}).json()
        assert http.post("/v1/completions", json={**body, "temperature": -1}).status_code == 400
        samples = _samples(http.get("/metrics").text)
    prompt = sum(u["prompt_tokens"] for u in plain) * 3 // 2 + native["meta_info"]["prompt_tokens"]
    assert samples[("loomlm:prompt_tokens_total", ())] == prompt
    assert samples[("loomlm:generation_tokens_total", ())] == 5 * 3 + 3
    assert samples[("loomlm:request_success_total", (("finished_reason", "length"),))] == 4
    assert samples[("loomlm:e2e_request_latency_seconds_count", ())] == 4
    assert samples[("loomlm:queue_time_seconds_count", ())] == 4
    assert samples[("loomlm:time_to_first_token_seconds_count", ())] == 1  # the streamed one
    assert samples[("loomlm:inter_token_latency_seconds_count", ())] >= 1
    assert samples[("loomlm:http_requests_total", (("route", "/v1/completions"), ("status", "200")))] == 3
    assert samples[("loomlm:http_requests_total", (("route", "/v1/completions"), ("status", "400")))] == 1
    assert samples[("loomlm:http_requests_total", (("route", "/generate"), ("status", "200")))] == 1
    assert samples[("loomlm:num_running_reqs", ())] == 0 and samples[("loomlm:num_queue_reqs", ())] == 0
    assert 0 <= samples[("loomlm:cache_hit_rate", ())] <= 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert len(lines) == 4 and all("finish length" in line and "output" in line for line in lines)
    assert f"request {native['meta_info']['id']}: prompt {native['meta_info']['prompt_tokens']}," in lines[-1]
    assert any("POST /v1/completions 400" in r.getMessage() for r in caplog.records)
