"""Counters the engine keeps about its own work (read by tests, benchmarks and, later, /metrics)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loomlm.runtime.forward_context import ForwardMode

if TYPE_CHECKING:
    from loomlm.runtime.batch import ScheduledBatch


@dataclass
class EngineStats:
    requests_received: int = 0
    requests_finished: int = 0
    forward_passes: int = 0
    extend_passes: int = 0
    decode_passes: int = 0
    computed_prefill_tokens: int = 0  # prompt tokens run through the model
    cached_prefill_tokens: int = 0  # prompt tokens served from the prefix cache
    decode_tokens: int = 0  # tokens fed by decode steps (and decodes mixed into extend steps)
    mixed_passes: int = 0  # extend passes that also carried running requests' decode tokens
    retracted_requests: int = 0  # running requests sent back to the queue for lack of memory
    shared_prefix_reads_saved: int = 0  # decode key/value token reads saved by reading shared prefixes once
    max_running_batch: int = 0
    jump_forward_jumps: int = 0  # constrained requests sent back to extend a forced continuation
    jump_forward_tokens: int = 0  # output tokens appended by jump-forward instead of sampled
    spec_verify_passes: int = 0  # speculative decoding: forward passes that verified drafts (no decode_passes)
    spec_verify_requests: int = 0  # requests in those passes, summed (each gets 1 + its accepted drafts)
    spec_draft_tokens: int = 0  # draft tokens fed to verify passes
    spec_accepted_tokens: int = 0  # draft tokens accepted (their output is what decoding would give)

    def record_step(self, batch: ScheduledBatch) -> None:
        self.forward_passes += 1
        n = int(batch.input_ids.numel())
        if batch.is_verify:
            B = len(batch.reqs)
            self.spec_verify_passes += 1
            self.spec_verify_requests += B
            self.decode_tokens += B
            self.spec_draft_tokens += n - B
        elif batch.mode == ForwardMode.EXTEND:
            self.extend_passes += 1
            self.computed_prefill_tokens += n - batch.mixed_decodes
            self.decode_tokens += batch.mixed_decodes
            self.mixed_passes += batch.mixed_decodes > 0
        else:
            self.decode_passes += 1
            self.decode_tokens += n
            for group in batch.shared_prefixes:
                self.shared_prefix_reads_saved += (group.members.numel() - 1) * group.slots.numel()
        self.max_running_batch = max(self.max_running_batch, len(batch.reqs))

    @property
    def cache_hit_rate(self) -> float:
        """Cached / (cached + computed) prefill tokens (SGLang's definition); 0 before any prefill."""
        total = self.cached_prefill_tokens + self.computed_prefill_tokens
        return self.cached_prefill_tokens / total if total else 0.0

    @property
    def spec_accept_length(self) -> float:
        """Tokens a request gets per verify pass (1 + accepted drafts), on average; 0 before any."""
        n = self.spec_verify_requests
        return (n + self.spec_accepted_tokens) / n if n else 0.0

    def snapshot(self) -> dict[str, float]:
        out = dataclasses.asdict(self)
        out["cache_hit_rate"] = self.cache_hit_rate
        out["spec_accept_length"] = self.spec_accept_length
        return out
