"""One error type for everything wrong with user input, with field paths a user can act on.

``ValidationFailed`` lists every problem as ``spec.tunnel.greKey: must be 0..4294967295, got 5000000000``:
the path uses the wire (camelCase) names from the YAML the user wrote, never Python names.
"""

import difflib
import json
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an object: where (``spec.hubs[1].name``) and what, in plain words."""

    path: str
    message: str
    source: str = ""
    """Which object or document the problem is in (``DMVPNSpoke/branch-a``), empty if obvious."""

    def __str__(self) -> str:
        located = f"{self.path}: {self.message}" if self.path else self.message
        return f"{self.source}: {located}" if self.source else located


class ValidationFailed(ValueError):
    """Raised by every parsing entry point of ``dmvpn.api``; ``str()`` lists one problem per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def in_source(self, source: str) -> "ValidationFailed":
        """The same problems, attributed to ``source`` (a document or object name)."""
        return ValidationFailed([Problem(p.path, p.message, p.source or source) for p in self.problems])


class SpecProblems(ValueError):
    """Raised inside model validators to report several problems, each at a path relative to the model.

    Pydantic wraps it into its ValidationError; :func:`problems_from` unpacks it again.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in problems))


def join_path(base: str, relative: str) -> str:
    """``spec`` + ``hubs[1].name`` -> ``spec.hubs[1].name``; indexes attach without a dot."""
    if not relative:
        return base
    if not base or relative.startswith("["):
        return base + relative
    return f"{base}.{relative}"


def show(value: Any) -> str:
    """A value as the user would have typed it in YAML/JSON, shortened if long."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- walking models along an error location --------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and ``X | None`` so that the structural type remains."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model_field(model: type[BaseModel], segment: str) -> tuple[str, Any] | None:
    """The wire name and annotation of the field ``segment`` (wire or Python name) of ``model``."""
    for name, field in model.model_fields.items():
        if segment in (name, field.alias):
            return field.alias or name, field.annotation
    return None


def _walk(root: type[BaseModel], loc: Sequence[int | str]) -> tuple[str, Any]:
    """Render ``loc`` with wire names and return the type found at its parent (for hints)."""
    path = ""
    current: Any = root
    parent: Any = root
    for segment in loc:
        parent = current
        kind = _unwrap(current)
        origin = typing.get_origin(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(segment, str):
            found = _model_field(kind, segment)
            name, current = found if found else (segment, None)
            path = join_path(path, name)
        elif origin is list and isinstance(segment, int):
            path, current = f"{path}[{segment}]", typing.get_args(kind)[0]
        elif origin is dict:
            path, current = f"{path}[{json.dumps(segment)}]", typing.get_args(kind)[1]
        elif isinstance(segment, int):
            path, current = f"{path}[{segment}]", None
        else:
            # A pydantic-internal step (union tag, validator name): not part of the user's document.
            continue
    return path, parent


def _unknown_field_message(parent: Any, field: str) -> str:
    model = _unwrap(parent)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "unknown field"
    allowed = sorted(f.alias or name for name, f in model.model_fields.items())
    guess = closest_name(field, allowed)
    if guess:
        return f"unknown field; did you mean {guess!r}?"
    return f"unknown field; allowed here: {', '.join(allowed)}"


def _transpositions(word: str) -> set[str]:
    return {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1)}


def closest_name(typed: str, allowed: Sequence[str]) -> str | None:
    """The allowed name a typo most likely meant: wrong case, two swapped letters, else the most similar."""
    for name in allowed:
        if name.lower() == typed.lower() or name in _transpositions(typed):
            return name
    close = difflib.get_close_matches(typed, allowed, n=1, cutoff=0.6)
    return close[0] if close else None


def _message(error: ErrorDetails) -> str:
    """Pydantic's message in our voice: "must be ..., got ..." rather than "Input should be ..."."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"must have {word} {bound} {'item' if bound == 1 else 'items'}"
    message = error["msg"]
    if message.startswith("Input should "):
        message = "must " + message.removeprefix("Input should ")
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = error.get("input")
    # "must ..." states a requirement, so show what was given; other messages already describe it.
    if message.startswith("must") and not isinstance(value, dict | list):
        message = f"{message}, got {show(value)}"
    return message


def problems_from(error: ValidationError, root: type[BaseModel], base: str = "") -> list[Problem]:
    """Every problem in a pydantic ValidationError, as field paths of the wire format below ``base``."""
    problems: list[Problem] = []
    for detail in error.errors(include_url=False):
        path, parent = _walk(root, detail["loc"])
        path = join_path(base, path)
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, SpecProblems):
            problems.extend(Problem(join_path(path, rel), message) for rel, message in cause.problems)
        elif detail["type"] == "extra_forbidden":
            problems.append(Problem(path, _unknown_field_message(parent, str(detail["loc"][-1]))))
        else:
            problems.append(Problem(path, _message(detail)))
    return problems


def fail(problems: Iterable[Problem]) -> None:
    """Raise ValidationFailed if there is any problem."""
    collected = list(problems)
    if collected:
        raise ValidationFailed(collected)
