"""loomlm.grammars: structured-output constraints (regex, JSON schema, choices, typed shortcuts) as guides.

The facade: the runtime and lang layers import this package only, never its modules.

- Compilers: `compile_regex`, `compile_json_schema` (through `json_schema_to_regex`), `compile_choices`,
  `compile_type` (and `type_regex` / `choices_regex` / `escape_literal`), each returning a `DFAGuide`
  over a `Vocabulary`, within `GrammarLimits`; a bad or too-big grammar raises `GrammarError`.
- `Guide`: the protocol the runtime decodes with (`guide_protocol`); `REJECTED` is what `advance`
  returns for a token that is not allowed.
- For the engine: `GrammarCache` (compiles off-thread, once per spec), `GrammarSpec`, `spec_from_params`,
  `canonical_json_schema`, and jump-forward (`JumpPlan`, `plan_jump`, `plan_prefix_jump`).
"""

from loomlm.grammars.cache import (
    CONSTRAINT_PARAMS,
    GrammarCache,
    GrammarSpec,
    canonical_json_schema,
    compile_spec,
    spec_from_params,
)
from loomlm.grammars.cfg_guide import CFGGuide, compile_cfg, compile_ebnf
from loomlm.grammars.errors import GrammarError, GrammarTimeoutError, GrammarUnsupportedError
from loomlm.grammars.grammar_ir import Grammar
from loomlm.grammars.guide import (
    FINISHED,
    DFAGuide,
    choices_regex,
    compile_choices,
    compile_json_schema,
    compile_regex,
    compile_type,
    escape_literal,
    type_regex,
)
from loomlm.grammars.guide_protocol import REJECTED, Guide, allowed_tokens, bitmask_words
from loomlm.grammars.json_schema import json_schema_to_grammar, json_schema_to_regex
from loomlm.grammars.jump_forward import JumpPlan, plan_jump, plan_prefix_jump
from loomlm.grammars.limits import GrammarLimits
from loomlm.grammars.vocabulary import Vocabulary

__all__ = [
    "CONSTRAINT_PARAMS",
    "CFGGuide",
    "DFAGuide",
    "FINISHED",
    "GrammarCache",
    "Grammar",
    "GrammarError",
    "GrammarLimits",
    "GrammarSpec",
    "GrammarTimeoutError",
    "GrammarUnsupportedError",
    "Guide",
    "JumpPlan",
    "REJECTED",
    "Vocabulary",
    "allowed_tokens",
    "bitmask_words",
    "canonical_json_schema",
    "choices_regex",
    "compile_cfg",
    "compile_choices",
    "compile_ebnf",
    "compile_json_schema",
    "compile_regex",
    "compile_spec",
    "compile_type",
    "escape_literal",
    "json_schema_to_grammar",
    "json_schema_to_regex",
    "plan_jump",
    "plan_prefix_jump",
    "spec_from_params",
    "type_regex",
]
