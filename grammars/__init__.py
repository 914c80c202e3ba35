"""loomlm.grammars: regex / JSON schema / EBNF -> token automata. Arrive with the structured-output issue."""
