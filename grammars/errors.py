"""The error types of the structured-output compilers."""


class GrammarError(ValueError):
    """A regex, JSON schema, grammar or choice list that cannot be compiled, or one too big for the
    configured limits."""


class GrammarTimeoutError(GrammarError):
    """A compile ran past its wall-clock budget (`GrammarLimits.max_seconds`). Unlike every other
    `GrammarError` this depends on machine speed and load, so compile caches do not keep it: the same
    grammar sent again is compiled again."""


class GrammarUnsupportedError(GrammarError):
    """Valid input that uses a construct the compiler cannot express (a lookaround or word boundary in a
    JSON-schema `pattern`, ...). With strict=False the JSON-schema compiler widens the language instead
    (the keyword is then ignored), as it does for other keywords it cannot express."""
