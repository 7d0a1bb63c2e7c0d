"""Step agreement labels by hand, on a yes/no question where a wrong step still states the right
answer: support, grouping by task, and how it caps Monte-Carlo labels."""

from __future__ import annotations

import pytest

from reasonloop.evaluator.step_agreement import agreement_labels, combine, step_support
from reasonloop.tasks.families.sum_above import SumAboveFamily
from reasonloop.types import Trace


def _trace(tid: str, task_id: str, text: str) -> Trace:
    steps, answer = SumAboveFamily().parse(text)
    return Trace(tid, task_id, text, steps, answer, "test")


def test_step_support_by_hand() -> None:
    steps = ["3+5=8", "8+2=11", "11-9=2"]
    others = [
        ["3+5=8", "8+2=10", "10-9=1"],
        ["3+5=8", "8+2=10", "10-9=1"],
        ["3+5=8", "8+2=11", "11-9=2"],
        ["3+5=9", "9+2=11", "11-9=2"],  # another slip that meets ours later: anywhere counts
    ]
    assert step_support(steps, others) == [0.75, 0.25, 0.5]
    assert step_support(["a"], [["a", "a"]]) == [1.0]  # a repeated step counts once per sample
    with pytest.raises(ValueError, match="at least one other sample"):
        step_support(steps, [])


def test_agreement_labels_group_by_task_and_skip_lone_samples() -> None:
    # 3+5+2>9?: the total is 10, so `y`; the lucky trace adds 8+2=11 and still says `y`
    traces = [
        _trace("a", "t1", "3+5=8;8+2=10;10-9=1#y"),
        _trace("b", "t1", "3+5=8;8+2=10;10-9=1#y"),
        _trace("c", "t1", "3+5=8;8+2=11;11-9=2#y"),
        _trace("d", "t2", "1+1=2;2-1=1#y"),  # alone on its task
        _trace("e", "t3", "3+5=8;8+2=11;11-9=2#y"),  # same text, other task: not counted for c
    ]
    got = agreement_labels(traces)
    assert set(got) == {"a", "b", "c"}  # d and e are alone on their tasks
    assert got["a"] == [1.0, 0.5, 0.5]
    assert got["c"] == [1.0, 0.0, 0.0]  # the slip and everything after it stand alone


def test_combine_caps_the_step_labels_and_keeps_the_answers() -> None:
    # rollouts recovered from the slip (0.75) and the answer was right (1.0)
    assert combine([1.0, 0.75, 1.0, 1.0], [1.0, 0.0, 0.0]) == [1.0, 0.0, 0.0, 1.0]
    assert combine([0.5, 0.0, 0.0], [1.0, 1.0]) == [0.5, 0.0, 0.0]  # never raised
    assert combine([1.0], []) == [1.0]  # no steps: the answer's label alone
    with pytest.raises(ValueError, match="2 step supports for 3 step labels"):
        combine([1.0, 1.0, 1.0, 1.0], [1.0, 1.0])
