"""Test helper: the tiny dummy model and ragged prompts on which the attention backends (triton, cpu) are
checked against the torch backend. Import it from a test with `sys.path.insert(0, str(Path(__file__).parent))`.
"""

from __future__ import annotations

import json

# The default model's attention shape (head_dim 64, 3 query heads per KV head), 2 small layers.
TINY = json.dumps(
    {
        "num_layers": 2,
        "hidden_size": 96,
        "intermediate_size": 160,
        "num_heads": 3,
        "num_kv_heads": 1,
        "head_dim": 64,
        "max_position_embeddings": 512,
    }
)
SHARED = list(range(100, 140))
# Ragged: a one-token prompt, short and long ones, and two sharing a 40-token prefix.
PROMPTS = [[7], list(range(200, 219)), list(range(300, 371)), SHARED + [5, 6, 7], SHARED + [9] * 20]
