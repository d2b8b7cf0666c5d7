"""The cheap look at a JSON inference body before anything parses it: an object, and no more values than fit."""

from __future__ import annotations

import re

from .errors import InvalidRequest, PayloadTooLarge, ServingError

STRUCTURE_SLACK = 256
"""Separators a body may hold beyond its values: keys, names, shapes, parameters of a V1 or V2 request."""

_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


def precheck(body: bytes, max_values: int | None) -> ServingError | None:
    """Why ``body`` is refused before parsing (None: parse it).

    Parsing builds a Python object per number: a body of 8 MiB of ``0,`` is four million ints
    and hundreds of megabytes before validation can say "too many instances". Two checks at C
    speed come first: the body is a JSON object (V1 and V2 bodies both are), and its count of
    separators (an upper bound on the values it holds, less a little structure) is within
    ``max_values`` (the instance limit times the values per instance; None: no bound known).
    """
    start = _LEADING_SPACE.match(body)
    first = body[start.end() if start else 0 : (start.end() if start else 0) + 1]
    if first != b"{":
        shown = first.decode("latin-1") if first else "nothing"
        return InvalidRequest(f"the body must be a JSON object (starting with '{{'), it starts with {shown!r}")
    if max_values is None:
        return None
    separators = body.count(b",")
    if separators > max_values + STRUCTURE_SLACK:
        return PayloadTooLarge(
            f"the body holds about {separators + 1} values; at most {max_values} fit in one request "
            "(the instance limit times the values per instance)"
        )
    return None
