"""Roles as methods of a program state: `s.user("hi")` appends a whole message, `with s.user():` opens one.

One implementation for every state that takes nodes (`ProgramState`, the tracer's `TracerState`): a
class mixes `RoleMethods` in and says, in `_add_node`, what taking a node means for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loomlm.lang.ir import Expr, RoleBegin, RoleEnd, role_expr


class RoleMethods:
    """`system`, `user` and `assistant` on top of `_add_node(node)`."""

    def _add_node(self, expr: Expr) -> None:
        raise NotImplementedError

    def _role(self, role: str, expr: Any = None) -> Any:
        """With `expr`: append the message and return its node (as SGLang does); without: a context
        manager whose block's text becomes the message."""
        if expr is not None:
            node = role_expr(role, expr)
            self._add_node(node)
            return node
        return self._role_scope(role)

    @contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self._add_node(RoleBegin(role))
        yield
        self._add_node(RoleEnd(role))

    def system(self, expr: Any = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role("assistant", expr)
