"""loomlm.runtime: the inference engine (scheduler, KV memory, model runner, sampler, server)."""
