"""Answer verifiers: right answers score 1.0, wrong or unreadable ones 0.0, nothing raises."""

from __future__ import annotations

import threading

import pytest

from reasonloop.evaluator.verifiers import exact, math, numeric, parse_number

MALFORMED = [
    None,
    "",
    "   ",
    "abc",
    "1/0",
    "nan",
    "inf",
    "0x10",
    "1e999999999",
    "--3",
    "3/-4",
    "1,23",
    "12 apples",
    "9" * 300,
    "\x00",
    42,
]


def test_exact_trims_whitespace_only():
    assert exact(" 42\n", "42") == 1.0
    assert exact("42.0", "42") == 0.0
    assert exact("Yes", "yes") == 0.0
    assert exact("", "") == 0.0
    assert exact(None, "42") == 0.0
    assert exact("42", None) == 0.0


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("42", "42"),
        ("+42", "42"),
        ("-7", "-7"),
        ("1,234", "1234"),
        ("3.50", "3.5"),
        (".5", "1/2"),
        ("5.", "5"),
        ("1e-3", "0.001"),
        ("2.5E+4", "25000"),
        ("-3 / 4", "-0.75"),
        ("6/8", "3/4"),
    ],
)
def test_numeric_accepts_equal_values_in_any_notation(pred, gold):
    assert numeric(pred, gold) == 1.0
    assert numeric(pred, gold, rel_tol=0.0) == 1.0


def test_numeric_rejects_different_values_and_honours_tolerance():
    assert numeric("-14282", "14282") == 0.0
    assert numeric("142820", "14282") == 0.0
    assert numeric("0.3333", "1/3") == 0.0
    assert numeric("0.3333", "1/3", rel_tol=1e-3) == 1.0
    assert numeric("0.001", "0", rel_tol=0.5) == 0.0  # relative tolerance is no help at zero
    assert numeric("0.001", "0", abs_tol=0.01) == 1.0
    # exact rational arithmetic: a float comparison of 0.1 + 0.2 would say otherwise
    assert numeric("0.30000000000000004", "0.3", rel_tol=0.0) == 0.0


@pytest.mark.parametrize("bad", MALFORMED)
def test_numeric_scores_malformed_input_zero_without_raising(bad):
    assert numeric(bad, "3") == 0.0
    assert numeric("3", bad) == 0.0
    assert parse_number(bad) is None


def test_numeric_rejects_nonsense_tolerances():
    assert numeric("1", "1", rel_tol=float("nan")) == 0.0
    assert numeric("1", "1", rel_tol=-1.0) == 0.0


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (r"so the answer is $\boxed{\frac{1}{2}}$", "0.5"),
        ("1/2", r"\frac12"),
        (r"$\sqrt{4}$", "2"),
        (r"\boxed{(1,2]}", "(1,2]"),
        (r"$x^2 + 2x + 1$", "(x+1)^2"),
    ],
)
def test_math_accepts_equivalent_forms(pred, gold):
    assert math(pred, gold) == 1.0


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (r"$\boxed{3}$", "2"),
        ("(1,2)", "(1,2]"),
        (r"\boxed{", "2"),
        ("x", "2"),
        ("", "2"),
        (None, "2"),
        ("2", None),
        ("2", ""),
    ],
)
def test_math_rejects_wrong_or_malformed(pred, gold):
    assert math(pred, gold) == 0.0


def test_math_runs_outside_the_main_thread():
    # math-verify's signal-based timeout raises off the main thread unless it is switched off
    results: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.extend([math(r"\boxed{3}", "3"), math(r"\boxed{4}", "3")])
        except BaseException as e:  # noqa: BLE001 - the test reports any escape
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == []
    assert results == [1.0, 0.0]
