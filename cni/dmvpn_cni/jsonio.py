"""JSON for a process that lives for a few milliseconds.

``import json`` pulls in ``re`` and ``enum`` and costs about 8 ms on a node's python3, which is as much
as the interpreter's own start-up and would dominate the plugin's latency budget (see
``bench/cni_bench.py``). The C accelerator ``_json`` that ``json`` itself uses has no such
dependencies, so we drive it directly: its scanner for decoding, its string escaper for encoding.
Where ``_json`` is missing or behaves differently (another interpreter, a future CPython), we fall
back to the ``json`` module, so correctness never depends on the shortcut.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_WHITESPACE = " \t\n\r"


class JSONError(ValueError):
    """The text is not a single valid JSON document."""


def _reject_constant(name: str) -> object:
    raise JSONError(f"{name} is not valid JSON")


class _ScanContext:
    """The attributes the C scanner reads from its context (what ``json.JSONDecoder`` provides)."""

    def __init__(self) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.array_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = _reject_constant
        self.memo: dict[str, str] = {}


def _make_fast_scanner() -> Callable[[str, int], tuple[object, int]] | None:
    try:
        import _json

        return _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    except Exception:  # any surprise means "use the json module"
        return None


def _make_fast_escaper() -> Callable[[str], str] | None:
    try:
        import _json

        escape = _json.encode_basestring_ascii
        if escape('a"\n\u00e9') != '"a\\"\\n\\u00e9"':
            return None
        return escape
    except Exception:
        return None


_scan = _make_fast_scanner()
_escape = _make_fast_escaper()


def loads(text: str) -> object:
    """Parse one JSON document; raise :class:`JSONError` with a position on bad input."""
    if _scan is None:
        return _loads_with_json_module(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except Exception:
        # Bad input. The C scanner reports errors through json.decoder, which it expects to be
        # imported already (it is not here), so let the json module parse again and explain.
        return _loads_with_json_module(text)
    if len(text[end:].rstrip(_WHITESPACE)) != 0:
        raise JSONError(f"extra data after the JSON document at character {end}")
    return value


def _loads_with_json_module(text: str) -> object:
    import json

    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise JSONError(str(err)) from None


def dumps(value: object) -> str:
    """Serialise plain JSON data (dict/list/str/int/float/bool/None) compactly."""
    if _escape is None:
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    parts: list[str] = []
    _encode(value, parts, _escape)
    return "".join(parts)


def _encode(value: object, parts: list[str], escape: Callable[[str], str]) -> None:
    if isinstance(value, str):
        parts.append(escape(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(int.__repr__(value))
    elif isinstance(value, float):
        import math

        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be represented in JSON")
        parts.append(float.__repr__(value))
    elif isinstance(value, dict):
        _encode_object(value, parts, escape)
    elif isinstance(value, (list, tuple)):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode(item, parts, escape)
        parts.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_object(value: dict[object, object], parts: list[str], escape: Callable[[str], str]) -> None:
    parts.append("{")
    first = True
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
        if not first:
            parts.append(",")
        first = False
        parts.append(escape(key))
        parts.append(":")
        _encode(item, parts, escape)
    parts.append("}")
