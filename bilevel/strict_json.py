"""Strict JSON for every file the library writes (metrics.jsonl, summary.json, test.json,
compare.json, settings.json, hyper.json): RFC 8259 has no NaN or Infinity, and readers
other than Python's (jq, JavaScript, most JSON libraries) refuse the bare `NaN` that
`json.dumps` writes by default.

One rule: a non-finite float is written as the string "NaN", "Infinity" or "-Infinity"
(the words that Python's `float()` and JavaScript's `Number()` read back); every finite
number stays a number.
"""

import json
import math

NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def strict(value):
    """`value` with every non-finite float (in dicts, lists and tuples) replaced by its word."""
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE[repr(float(value))]
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    return value


def dumps(value, **options) -> str:
    """json.dumps of `strict(value)`, refusing any NaN left (allow_nan=False)."""
    return json.dumps(strict(value), allow_nan=False, **options)
