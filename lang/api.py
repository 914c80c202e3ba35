"""The functions programs are written with: `gen`, `select`, roles, and backend selection.

Names and argument names are SGLang's, so `import loomlm as sgl` runs SGLang programs unchanged.
`gen(choices=...)` is a `select`; `gen(dtype=int)` constrains the output to an integer (the variable
stays text); `gen(json_schema=Model)` takes a dict, JSON text or pydantic model class.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from loomlm.lang.choices import ChoicesMethod, token_length_normalized
from loomlm.lang.ir import Expr, Gen, GenParams, RoleBegin, RoleEnd, Select, role_expr

_P = inspect.Parameter


def _gen_signature() -> inspect.Signature:
    """`gen`'s signature: `name`, then `GenParams`' fields (SGLang's order), with `choices` and
    `choices_method` after `dtype` where SGLang has them. Built from the dataclass, so the arguments are
    defined once and `help(gen)` and editors still show every name."""
    params = [_P("name", _P.POSITIONAL_OR_KEYWORD, default=None, annotation="str | None")]
    for f in dataclasses.fields(GenParams):
        params.append(_P(f.name, _P.POSITIONAL_OR_KEYWORD, default=None, annotation=f.type))
        if f.name == "dtype":
            params += [
                _P("choices", _P.POSITIONAL_OR_KEYWORD, default=None, annotation="Sequence[str] | None"),
                _P("choices_method", _P.POSITIONAL_OR_KEYWORD, default=None, annotation="ChoicesMethod | None"),
            ]
    return inspect.Signature(params, return_annotation="Expr")


_GEN_SIGNATURE = _gen_signature()


def gen(*args: Any, **kwargs: Any) -> Expr:
    """Generate text into variable `name` (None: appended, not stored). Unset arguments inherit the
    defaults given to `run`. `choices=[...]` makes it a `select`."""
    try:
        values = _GEN_SIGNATURE.bind(*args, **kwargs).arguments
    except TypeError as exc:
        raise TypeError(f"gen() {exc}") from None
    name = values.pop("name", None)
    choices, method = values.pop("choices", None), values.pop("choices_method", None)
    if choices is not None:
        temperature = values.get("temperature")
        return select(name, choices, temperature or 0.0, method or token_length_normalized)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"gen name must be a string, got {name!r}")
    return Gen(name, GenParams(**values))


gen.__signature__ = _GEN_SIGNATURE  # type: ignore[attr-defined]


def gen_int(name: str | None = None, **kwargs: Any) -> Expr:
    return gen(name, dtype=int, **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> Expr:
    return gen(name, dtype=str, **kwargs)


def select(
    name: str | None = None,
    choices: Sequence[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesMethod = token_length_normalized,
) -> Expr:
    """Append the choice the model scores highest (see `loomlm.lang.choices` for the methods)."""
    if (
        choices is None
        or isinstance(choices, str)
        or not list(choices)
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise ValueError(f"select choices must be a non-empty list of non-empty strings, got {choices!r}")
    if not isinstance(choices_method, ChoicesMethod):
        raise TypeError(f"choices_method must be one of loomlm's choices methods, got {choices_method!r}")
    return Select(name, tuple(choices), float(temperature), choices_method)


def _role_function(role: str) -> Callable[[Any], Expr]:
    def message(expr: Any = "") -> Expr:
        return role_expr(role, expr)

    message.__name__ = message.__qualname__ = role
    message.__doc__ = f"A whole {role} message: `s += sgl.{role}(expr)`."
    return message


def _marker_function(node: type, role: str, end: str) -> Callable[[], Expr]:
    def marker() -> Expr:
        return node(role)

    marker.__name__ = marker.__qualname__ = f"{role}_{end}"
    marker.__doc__ = f"The {end} of a {role} message (the text between is its content)."
    return marker


system, user, assistant = (_role_function(r) for r in ("system", "user", "assistant"))
system_begin, user_begin, assistant_begin = (
    _marker_function(RoleBegin, r, "begin") for r in ("system", "user", "assistant")
)
system_end, user_end, assistant_end = (_marker_function(RoleEnd, r, "end") for r in ("system", "user", "assistant"))


# ---- SGLang's other public functions ---------------------------------------------------------------
def flush_cache(backend: Any = None) -> bool:
    """Drop the backend's cached prefixes (the default backend's when none is given); False when there is
    no backend or nothing could be flushed (an engine with requests running flushes nothing)."""
    from loomlm.lang.backends.default import as_backend, get_default_backend

    target = get_default_backend() if backend is None else as_backend(backend)
    return False if target is None else target.flush_cache()


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    """What the backend reports about its model and server (None when there is no backend)."""
    from loomlm.lang.backends.default import as_backend, get_default_backend

    target = get_default_backend() if backend is None else as_backend(backend)
    return None if target is None else target.get_server_info()


def image(expr: Any) -> Expr:
    """SGLang's image input. loomlm's models take text only, so this raises NotImplementedError."""
    raise NotImplementedError("sgl.image: loomlm serves text-only models; images are not supported")


def video(path: str, num_frames: int) -> Expr:
    """SGLang's video input. loomlm's models take text only, so this raises NotImplementedError."""
    raise NotImplementedError("sgl.video: loomlm serves text-only models; videos are not supported")


def _unsupported_backend(name: str) -> Callable[..., Any]:
    def backend(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(
            f"sgl.{name}: loomlm has no {name} backend; use loomlm.OpenAI(base_url=...) "
            f"for an OpenAI-compatible endpoint, RuntimeEndpoint or Runtime"
        )

    backend.__name__ = backend.__qualname__ = name
    backend.__doc__ = f"SGLang's {name} backend; not available in loomlm (raises NotImplementedError)."
    return backend


Anthropic, LiteLLM, VertexAI = (_unsupported_backend(n) for n in ("Anthropic", "LiteLLM", "VertexAI"))
