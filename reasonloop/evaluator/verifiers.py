"""Answer verifiers: pure functions `(pred, gold) -> score in [0, 1]`.

`pred` is model output, hence untrusted: every verifier returns 0.0 for anything it cannot
read (None, empty, malformed, absurdly long) and never raises. `gold` is trusted but is given
the same treatment, so a bad gold answer scores 0.0 rather than crashing a round.

- `exact`: string equality after trimming surrounding whitespace.
- `numeric`: the value of an integer, decimal (optional exponent) or fraction, within a
  relative tolerance; exact rational arithmetic, so `0.1 + 0.2` style rounding cannot creep in.
- `math`: mathematical equivalence with `math-verify` (LaTeX, expressions, sets, intervals...).
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

MAX_CHARS = 256
"""Longer answers are not parsed at all (a number this long is not an answer, it is noise)."""
MAX_EXPONENT = 400
"""`1e999999999` would make an exact Fraction with a billion digits: refuse such exponents."""

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)"  # plain digits, or digits grouped by thousands
_DECIMAL = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?")
_FRACTION = re.compile(rf"([+-]?{_DIGITS})\s*/\s*({_DIGITS})")


def exact(pred: str | None, gold: str | None) -> float:
    """1.0 if the two strings are equal after trimming surrounding whitespace, else 0.0."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return 0.0
    pred, gold = pred.strip(), gold.strip()
    return 1.0 if pred and pred == gold else 0.0


def parse_number(text: str | None) -> Fraction | None:
    """The exact value of `text`, or None when it is not a plain number.

    Accepted: `42`, `-7`, `+3`, `1,234` (thousands grouped by commas), `3.14`, `.5`, `5.`,
    `1e-3`, `2.5E+4`, `3/4`, `-3 / 4`. Rejected: anything else, including `1/0`, `nan`, `inf`,
    hexadecimal, units or surrounding words, and exponents beyond +-`MAX_EXPONENT`.
    """
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    text = text.strip()
    if m := _DECIMAL.fullmatch(text):
        if m.group(1) is not None and abs(int(m.group(1))) > MAX_EXPONENT:
            return None
        return Fraction(text.replace(",", ""))
    if m := _FRACTION.fullmatch(text):
        num, den = (int(g.replace(",", "")) for g in m.groups())
        return Fraction(num, den) if den != 0 else None
    return None


def numeric(
    pred: str | None, gold: str | None, rel_tol: float = 1e-9, abs_tol: float = 0.0
) -> float:
    """1.0 if both parse as numbers and `|pred - gold| <= max(rel_tol * max(|pred|, |gold|),
    abs_tol)`, else 0.0. `rel_tol=0` asks for exact equality (`0.5` equals `1/2`)."""
    p, g = parse_number(pred), parse_number(gold)
    if p is None or g is None:
        return 0.0
    if not (rel_tol >= 0 and abs_tol >= 0):  # also rejects NaN tolerances
        return 0.0
    bound = max(Fraction(rel_tol) * max(abs(p), abs(g)), Fraction(abs_tol))
    return 1.0 if abs(p - g) <= bound else 0.0


def math(pred: str | None, gold: str | None, timeout: int | None = 5) -> float:
    """1.0 if `math-verify` finds `pred` mathematically equal to `gold`, else 0.0.

    `pred` may be a full solution text: math-verify extracts its last boxed / LaTeX / plain
    expression. A bare LaTeX answer that it finds nothing in (`\\frac12`, `x^2+1`, `(1,2]`) is
    read again as inline maths (`$...$`), for the gold answer and the prediction alike. `timeout` (seconds, per parse and per comparison) uses `signal.alarm`, which
    only works in the main thread; elsewhere it is switched off, since math-verify would raise.
    Callers running it off the main thread must bound its time themselves (run it in a worker
    process they can kill): sympy can take very long on adversarial input.
    """
    if (
        not isinstance(pred, str)
        or not isinstance(gold, str)
        or not pred.strip()
        or not gold.strip()
    ):
        return 0.0
    import math_verify  # deferred: importing sympy and latex2sympy takes about a second
    from math_verify.errors import TimeoutException

    if threading.current_thread() is not threading.main_thread():
        timeout = None
    try:
        gold_parsed = _parse(math_verify.parse, gold, timeout)
        pred_parsed = _parse(math_verify.parse, pred, timeout)
        if not gold_parsed or not pred_parsed:
            return 0.0
        ok = math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=timeout)
    except (Exception, TimeoutException):
        # math-verify catches most of its own errors; whatever escapes is a failure to verify.
        return 0.0
    return 1.0 if ok else 0.0


def _parse(parse, text: str, timeout: int | None) -> list:
    """math-verify's parse, retried as inline maths when it extracts nothing."""
    return parse(text, parsing_timeout=timeout) or parse(f"${text}$", parsing_timeout=timeout)
