"""Forward-backward consistency (FOBAR): the combination rule by hand, the families' backward
questions on their invariant (a question built from the right answer gives back the hidden
number, one built from a wrong answer does not), the judge with an exact backward solver, and
a real loop run with the tiny model whose questions, solutions and resume are checked."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from small_run import SMALL, nested

from reasonloop.config import load_config
from reasonloop.evaluator.forward_backward import (
    fobar_scores,
    judge_forward_backward,
    text_questions,
)
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import read_records
from reasonloop.tasks.files import FileFamily, save_tasks
from reasonloop.tasks.registry import get_family
from reasonloop.types import Judgement, Task, Trace


def test_scores_by_hand():
    votes = Counter({"3": 3, "5": 2, "9": 1})
    # "3": 1 of 4 backward solutions gave the hidden number; "5": 4 of 4; "9": not asked.
    back = {"3": (1, 4), "5": (4, 4)}
    scores = fobar_scores(votes, back, n_samples=8, alpha=0.5)
    assert scores == pytest.approx({"3": 3 / 8 * 1 / 4, "5": 2 / 8, "9": 1 / 8})
    # alpha .25: rate^3; the ranking is FOBAR's P_f^alpha * P_b^(1-alpha) for any alpha.
    assert fobar_scores(votes, back, 8, 0.25)["3"] == pytest.approx(3 / 8 * (1 / 4) ** 3)
    for alpha in (0.2, 0.5, 0.8):
        ours = fobar_scores(votes, back, 8, alpha)
        rate = {"3": 0.25, "5": 1.0, "9": 1.0}
        fobar = {a: (votes[a] / 8) ** alpha * rate[a] ** (1 - alpha) for a in votes}
        assert sorted(ours, key=ours.get) == sorted(fobar, key=fobar.get)
    # alpha 1 is the vote.
    assert fobar_scores(votes, back, 8, 1.0) == pytest.approx({"3": 3 / 8, "5": 2 / 8, "9": 1 / 8})
    # Every backward solution missed: refuted.
    assert fobar_scores(votes, {"3": (0, 4)}, 8, 0.5)["3"] == 0.0
    with pytest.raises(ValueError, match="alpha"):
        fobar_scores(votes, back, 8, 0.0)


def test_scores_without_backward_evidence_are_the_vote_shares():
    # Two of four samples gave no answer: they vote for nobody, as in the majority vote.
    assert fobar_scores(Counter({"7": 2}), {}, n_samples=4, alpha=0.5) == pytest.approx({"7": 0.5})
    assert fobar_scores(Counter({"7": 1, "8": 1}), {}, 2, 0.5) == pytest.approx(
        {"7": 0.5, "8": 0.5}
    )
    assert fobar_scores(Counter(), {}, 3, 0.5) == {}


def _solution(family, question: Task) -> str:
    return family.solve(question)[1]


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_linear_equation_backward_questions(level):
    family = get_family("linear_equation")
    rng = random.Random(level)
    posed_wrong = 0
    for _ in range(200):
        task = family.make(rng, level)
        x = int(task.answer)
        (q,) = family.backward(task, task.answer)
        assert q.family == family.name and q.parents == [task.id]
        assert q.params["candidate"] == task.answer
        assert q.params["hidden"] in {"a", "b"}
        assert q.prompt.endswith(":") and "*" not in q.prompt  # the family's own format
        assert not q.prompt.startswith("-")  # a positive coefficient, as every level draws
        assert _solution(family, q) == q.answer  # the right answer gives back the hidden number
        for wrong in {x - 1, x + 1, x + 7, -x} - {x}:
            for w in family.backward(task, str(wrong)):
                posed_wrong += 1
                assert _solution(family, w) != w.answer
    assert posed_wrong > 100
    task = family.make(rng, level)
    assert family.backward(task, "five") == []
    assert family.backward(task, "") == []


def test_linear_equation_backward_hides_the_coefficient():
    family = get_family("linear_equation")
    task = family.from_coefficients(3, 4, 0, 19)  # 3x+4=19, x = 5
    (q,) = family.backward(task, "5")
    assert (q.prompt, q.answer, q.params["hidden"]) == ("5x+4=19:", "3", "a")
    (w,) = family.backward(task, "3")
    assert (w.prompt, w.answer) == ("3x+4=19:", "3")  # its solution is 5, not the hidden 3
    (z,) = family.backward(task, "0")  # 0x: b is hidden instead, y = d
    assert (z.prompt, z.answer, z.params["hidden"]) == ("x=19:", "4", "b")
    assert family.backward(task, "2") == []  # 2y+4=19 has no integer solution
    (n,) = family.backward(task, "-5")  # -5y+4=19 is written 5y-4=-19
    assert (n.prompt, n.answer) == ("5x-4=-19:", "3")


@pytest.mark.parametrize("negative_from", [None, 2])
def test_chain_sum_backward_questions(negative_from):
    family = get_family("chain_sum", negative_from=negative_from)
    rng = random.Random(7)
    for level in (2, 3, 5, 8):
        for _ in range(100):
            task = family.make(rng, level)
            qs = family.backward(task, task.answer)
            assert [q.params["hidden"] for q in qs] == ["last", "first"]
            terms = task.params["terms"]
            assert [q.answer for q in qs] == [str(terms[-1]), str(terms[0])]
            for q in qs:
                assert _solution(family, q) == q.answer
            wrong = str(int(task.answer) + rng.choice([-3, -1, 1, 10]))
            for w in family.backward(task, wrong):
                assert _solution(family, w) != w.answer
    task = family.from_terms([3, 5, 2])
    assert [q.prompt for q in family.backward(task, "10")] == ["10-3-5=", "10-5-2="]


def test_text_questions_follow_fobar():
    prompt = "Tom has 3 apples and buys 12 more on the 2nd day. How many has he?"
    qs = text_questions(prompt, "15")
    assert [h for _, h in qs] == ["3", "12"]  # "2nd" is a word, not a number
    first = qs[0][0]
    assert first.startswith("Tom has X apples and buys 12 more")
    assert first.endswith(
        "If we know the answer to the above question is 15, what is the value of unknown "
        "variable X?"
    )
    assert text_questions(prompt, "fifteen") == []
    assert len(text_questions("a 1 b 2 c 3.5 d -4", "2", limit=10)) == 4
    assert text_questions("no numbers here", "2") == []


def test_numeric_task_files_pose_fobar_questions(tmp_path):
    path = tmp_path / "t.jsonl"
    save_tasks([Task("w", "file", "I had 9 pens and lost 4. How many now?", "5")], path)
    numeric = FileFamily(path, verifier="numeric")
    task = numeric.make(random.Random(0), 0)
    qs = numeric.backward(task, "5")
    assert [q.answer for q in qs] == ["9", "4"] and qs[0].parents == [task.id]
    assert "I had X pens" in qs[0].prompt
    assert FileFamily(path).backward(task, "5") == []  # exact answers need not be numbers


def _exact_solver(family, samples: int = 3):
    """A Reasoner that solves every backward question right (the family's own solver)."""

    def solve(questions: list[Task]) -> list[Trace]:
        return [
            Trace(f"{q.id}-{j}", q.id, "", [], _solution(family, q), "exact")
            for q in questions
            for j in range(samples)
        ]

    return solve


def _traces(task: Task, answers: list[str | None]) -> list[Trace]:
    return [Trace(f"{task.id}-{i}", task.id, "", [], a, "m") for i, a in enumerate(answers)]


def test_judge_overrules_a_wrong_majority():
    family = get_family("linear_equation")
    task = family.from_coefficients(3, 4, 0, 19)  # x = 5
    other = family.from_coefficients(2, 1, 0, 7)  # x = 3
    traces = _traces(task, ["3", "3", "3", "5", "5"]) + _traces(other, ["3", "3", "3", None, "4"])
    tasks = {task.id: task, other.id: other}
    fb = judge_forward_backward(
        tasks, traces, family.backward, _exact_solver(family), 1, min_share=0.4
    )
    verdict = {j.trace_id: j.verdict for j in fb.judgements}
    score = {j.trace_id: j.scores[0] for j in fb.judgements}
    # Task 1: the vote says 3 (.6); backwards, 5 gives back a = 3 and 3 does not.
    assert [verdict[t.id] for t in traces[:5]] == [False] * 3 + [True] * 2
    # Vote shares .6 and .4; backward rates 0 of 3 for "3", 3 of 3 for "5".
    assert score[traces[0].id] == 0.0
    assert score[traces[3].id] == pytest.approx(0.4)
    # Task 2: the majority is right and its backward check agrees.
    assert [verdict[t.id] for t in traces[5:]] == [True] * 3 + [False] * 2
    assert fb.info["tasks_flipped"] == 1
    # Two candidates each (the most voted): 3 and 5, then 3 and 4 (4 has no integer 4y+1=7: none).
    assert fb.info["questions"] == 3 and fb.info["solutions"] == 9
    assert {q.parents[0] for q in fb.questions} == {task.id, other.id}
    # Label-free: the same judgements with every gold answer removed.
    blind = {k: replace(t, answer=None) for k, t in tasks.items()}
    again = judge_forward_backward(
        blind, traces, family.backward, _exact_solver(family), 1, min_share=0.4
    )
    assert again.judgements == fb.judgements


def test_judge_without_questions_is_the_majority_vote():
    family = get_family("linear_equation")
    task = family.from_coefficients(3, 4, 0, 19)
    traces = _traces(task, ["5", "5", "6", None])
    fb = judge_forward_backward(
        {task.id: task}, traces, lambda t, a: [], _exact_solver(family), 2, min_share=0.5
    )
    assert [j.verdict for j in fb.judgements] == [True, True, False, False]
    assert [j.scores[0] for j in fb.judgements] == pytest.approx([0.5, 0.5, 0.25, 0.0])
    assert fb.questions == [] and fb.info["questions"] == 0


def test_absurd_candidates_make_no_prompt_longer_than_the_limit():
    family = get_family("linear_equation")
    task = family.from_coefficients(3, 4, 0, 19)
    huge = "7" * 30  # 7...7y+4=19 would be posed if it had an integer solution; 1 does
    traces = _traces(task, [huge, huge, "1", "1"])
    fb = judge_forward_backward(
        {task.id: task},
        traces,
        lambda t, a: family.backward(t, "1") if a == huge else family.backward(t, a),
        _exact_solver(family),
        1,
        min_share=0.5,
        max_prompt_chars=8,
    )
    assert all(len(q.prompt) <= 8 for q in fb.questions)


# A real loop: linear equations, the tiny model, one label-free round judged forward-backward.
FB_RUN = SMALL | {
    "tasks.family": "linear_equation",
    "tasks.seed_levels": [1, 2],
    "tasks.heldout_levels": [1, 2, 3],
    "reasoner.max_new_tokens": 24,
    "postprocess.max_chars": 40,
    "evaluator.kind": "forward-backward",
    "evaluator.forward_backward.samples": 2,
    "seed_train.steps": 150,
}


def _fb_run(out, log=lambda _: None) -> dict:
    cfg = load_config("rft", None, {"rounds": 1, "seed": 4} | nested(FB_RUN))
    return run_loop(cfg, out, show_progress=False, log=log)


def test_the_loop_judges_forward_backward_and_keeps_its_questions(tmp_path):
    out = tmp_path / "run"
    summary = _fb_run(out)
    assert summary["complete"]
    d = out / "rounds" / "r001"
    tasks = {t.id: t for t in read_records(d / "tasks.parquet", Task)}
    traces = read_records(d / "traces.parquet", Trace)
    judgements = read_records(d / "judgements.parquet", Judgement)
    questions = read_records(d / "backward_tasks.parquet", Task)
    solutions = read_records(d / "backward_traces.parquet", Trace)
    assert {j.trace_id for j in judgements} == {t.id for t in traces}
    assert {j.evaluator for j in judgements} == {"forward-backward"}
    assert questions, "the seed model gave no answer to question backwards"
    answers = {(t.task_id, t.answer) for t in traces}
    for q in questions:  # lineage: each question tests an answer a trace of its parent gave
        assert q.made_by == "linear_equation@backward"
        assert (q.parents[0], q.params["candidate"]) in answers
        assert q.parents[0] in tasks
    assert Counter(s.task_id for s in solutions) == {q.id: 2 for q in questions}
    manifest_solve = summary_solve(out)
    assert manifest_solve["forward_backward"]["questions"] == len(questions)
    assert manifest_solve["files"] == ["backward_tasks.parquet", "backward_traces.parquet"]

    # A deleted record of the judge is noticed, and the redone phase writes the same records.
    (d / "backward_traces.parquet").unlink()
    said: list[str] = []
    assert _fb_run(out, said.append)["complete"]
    assert any("backward_traces.parquet: missing" in m for m in said)
    assert read_records(d / "backward_traces.parquet", Trace) == solutions
    assert read_records(d / "judgements.parquet", Judgement) == judgements


def summary_solve(out) -> dict:
    import json

    return json.loads((out / "manifest.json").read_text())["rounds"]["1"]["phases"]["solve"]


def test_a_family_without_backward_questions_is_refused(tmp_path):
    from reasonloop.config import ConfigError

    cfg = load_config(
        "rft", None, {"rounds": 1} | nested(SMALL | {"evaluator.kind": "forward-backward"})
    )
    with pytest.raises(ConfigError, match="family 'addition' poses no backward questions"):
        run_loop(cfg, tmp_path / "run", show_progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()
