"""A fast, selective parser for the Prometheus text format.

The exporter only needs a few dozen families out of expositions that can hold thousands of series
(one per LoRA adapter, DP rank, bucket...). prometheus_client's parser builds an object per
sample for everything; this one looks the sample name up first and parses labels only for the
names it wants, while still checking every line's syntax so garbage is reported as such.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterator

_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
# name="value" pairs, each followed by a comma or the end; a trailing comma and blanks are allowed.
_LABEL_SET = re.compile(r'\s*(?:[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:[^"\\]|\\.)*"\s*(?:,\s*|\Z))*\Z')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


class ParseError(ValueError):
    def __init__(self, line_no: int, line: str, why: str) -> None:
        shown = line if len(line) <= 120 else line[:117] + "..."
        super().__init__(f"line {line_no}: {why}: {shown!r}")


class TooManySamples(ValueError):
    """More wanted samples than the cap: the exposition is refused whole (a truncated one would lie)."""


Sample = tuple[str, dict[str, str], float]


def _value(text: str) -> float:
    text = text.strip()
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    return float(text)


def _labels(body: str, line_no: int, line: str) -> dict[str, str]:
    # One C-level pass validates the whole label set, one more extracts the pairs: about twice as fast
    # as matching label by label in Python, and label sets are most of a wanted line.
    if _LABEL_SET.match(body) is None:
        raise ParseError(line_no, line, "malformed label set")
    out = dict(_LABEL_PAIR.findall(body))
    if "\\" in body:
        for key, value in out.items():
            if "\\" in value:
                out[key] = _UNESCAPE.sub(lambda e: _ESCAPES.get(e.group(1), "\\" + e.group(1)), value)
    return out


def iter_samples(text: str, wanted: Container[str], *, max_samples: int | None = None) -> Iterator[Sample]:
    """Yield (name, labels, value) for samples whose name is in ``wanted``; validate the rest.

    Raises ParseError at the first line that is not valid text exposition, and TooManySamples at the
    wanted sample past ``max_samples``: parse cost and output series stay bounded whatever the engine sends.
    """
    budget = max_samples if max_samples is not None else -1
    for line_no, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if line[0] not in _NAME_START:
            raise ParseError(line_no, raw, "not a metric line")
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            close = line.rfind("}")
            if close < brace:
                raise ParseError(line_no, raw, "unclosed label set")
            rest = line[close + 1 :]
            label_body = line[brace + 1 : close]
        else:
            if space == -1:
                raise ParseError(line_no, raw, "sample without a value")
            name = line[:space]
            rest = line[space:]
            label_body = ""
        parts = rest.split()
        if not parts or len(parts) > 2:
            raise ParseError(line_no, raw, "expected a value and an optional timestamp")
        if name not in wanted:
            # Syntax check only: cheap enough, and it tells garbage from an engine we don't know.
            if not _looks_numeric(parts[0]):
                raise ParseError(line_no, raw, "value is not a number")
            continue
        try:
            value = _value(parts[0])
        except ValueError:
            raise ParseError(line_no, raw, "value is not a number") from None
        if budget == 0:
            raise TooManySamples(f"more than {max_samples} wanted samples")
        budget -= 1
        yield name, (_labels(label_body, line_no, raw) if label_body else {}), value


def _looks_numeric(token: str) -> bool:
    c = token[0]
    return c.isdigit() or c in "+-.NI"
