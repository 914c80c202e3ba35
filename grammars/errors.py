"""The error types of the structured-output compilers."""


class GrammarError(ValueError):
    """A regex, JSON schema, grammar or choice list that cannot be compiled, or one too big for the
    configured limits."""


class GrammarTimeoutError(GrammarError):
    """A compile ran past its wall-clock budget (`GrammarLimits.max_seconds`). Unlike every other
    `GrammarError` this depends on machine speed and load, so compile caches do not keep it: the same
    grammar sent again is compiled again."""
