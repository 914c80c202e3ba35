"""The one error type of the structured-output compilers."""


class GrammarError(ValueError):
    """A regex, JSON schema, grammar or choice list that cannot be compiled, or one too big for the
    configured limits."""
