"""LLM-driven task evolution: a language model rewrites a task by one operator, and the result is
accepted only after it is parsed, validated and its answer verified.

Operators, with their papers:

- Evol-Instruct (Xu et al. 2023, "WizardLM"), in-depth evolving: `add_constraints`, `deepen`,
  `concretise`, `increase_reasoning`, `complicate_input` (complexity up);
- MetaMath (Yu et al. 2023): `rephrase` (same question, other words: the answer must stay) and
  `backward` (FOBAR-style: one number of the question becomes the unknown and the original
  answer is given; the answer is the hidden number).

The generator is anything with `generate(prompts, n, sampling)`: an OpenAI-compatible endpoint
through `models/openai.py` (vLLM, llama.cpp, `reasonloop serve`) or a local tiny/hf model. Its
output must have the form `QUESTION: ...` / `ANSWER: ...` (or `PROGRAM: ...` for program tasks)
and pass validation (length, printable characters, a question mark or a question word, not a
copy of the parent). What is verified, honestly:

- Program tasks (`params["program"]`): the evolved program is checked against the grammar and
  run in the sandbox; its gold is the sandbox's value (ground truth). Complexity operators must
  give strictly more operations than the parent (the family's difficulty measure); `rephrase`
  must give an equivalent program (the same sandbox value).
- Text tasks (reasoning-gym and others): the LLM's stated answer is re-derived by a second,
  independent prompt (`SOLVE`) and the two must agree (self-consistency, not ground truth;
  recorded as `params["verified_by"] = "llm-agreement"`). `rephrase` must keep the parent's gold
  answer (stated and re-derived); `backward` must hide a number of the parent's prompt, state
  it as the answer, and mention the parent's answer.

Rejections carry a reason (`unparsable`, `too_long`, `bad_charset`, `no_question`, `unchanged`,
`leaked` (the question states its own answer), `answer_changed`, `disagree`, `not_harder`,
`backward_mismatch`, the program checker's and the sandbox's). Lineage: `parents=[parent id]`,
`made_by="llm-evolve:<op>@<model>"`, `round`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from reasonloop.models.base import Completion, Sampling
from reasonloop.tasks import programs
from reasonloop.tasks.base import Family
from reasonloop.tasks.families.program import ProgramFamily
from reasonloop.tasks.reliability import RejectedTask, rejected
from reasonloop.types import Task, stable_id


class Generator(Protocol):
    def generate(
        self, prompts: list[str], n: int, sampling: Sampling
    ) -> list[list[Completion]]: ...


@dataclass(frozen=True)
class Operator:
    """`kind`: `harder` (complexity up), `same` (answer must stay) or `backward`."""

    kind: str
    instruction: str


OPERATORS: dict[str, Operator] = {
    "add_constraints": Operator(
        "harder", "Add one more constraint or requirement to the task, so it needs more work."
    ),
    "deepen": Operator("harder", "Make the task deeper: ask about a more involved quantity."),
    "concretise": Operator(
        "harder", "Replace a general part of the task by a more specific, concrete one."
    ),
    "increase_reasoning": Operator(
        "harder", "Rewrite the task so that solving it needs more reasoning steps."
    ),
    "complicate_input": Operator(
        "harder", "Make the input of the task larger or more complicated (more numbers or items)."
    ),
    "rephrase": Operator("same", "Rephrase the task in other words. Its answer must not change."),
    "backward": Operator(
        "backward",
        "Hide one number of the task behind X, state the original answer as known, and ask "
        "for X. The answer is the hidden number.",
    ),
}

PROGRAM_INSTRUCTIONS = {
    "harder": "Write a harder Python integer expression with more operations.",
    "same": "Write an equivalent Python integer expression (the same value, other form).",
}

EVOLVE_TEMPLATE = (
    "You rewrite tasks. {instruction}\n"
    "Reply with exactly two lines:\nQUESTION: <the new task>\nANSWER: <its final answer>\n\n"
    "TASK: {prompt}\nANSWER OF TASK: {answer}\n"
)
PROGRAM_TEMPLATE = (
    "You rewrite Python integer expressions (digits, + - * // % ** and parentheses only). "
    "{instruction}\nReply with exactly one line:\nPROGRAM: <expression>\n\n"
    "EXPRESSION: {program}\n"
)
SOLVE_TEMPLATE = (
    "Solve the task. Reply with exactly one line:\nANSWER: <final answer>\n\nTASK: {prompt}\n"
)

_QUESTION_WORDS = re.compile(
    r"\b(what|which|how|find|compute|calculate|determine|solve|give|evaluate|list|sort|count)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# Only an answer stated as one counts as a leak: the bare number is too common a coincidence
# in arithmetic ("(7 + -7) + 2" asks for 2).
_ANSWER_CUE = r"\b(?:answer|solution)\b[^\w-]*(?:(?:is|equals)\b[^\w-]*)?"


@dataclass(frozen=True)
class Settings:
    """How candidates are sampled and validated (`creator.llm_evolve` in a run config)."""

    model_name: str = "model"
    temperature: float = 0.7
    max_new_tokens: int = 256
    min_chars: int = 8
    max_chars: int = 600
    max_answer_chars: int = 64
    ascii_only: bool = True
    """Printable ASCII only (the tiny backend's character vocabulary)."""
    seed: int = 0


def read_field(text: str, name: str) -> str | None:
    """The value after `NAME:` on the first line that starts with it (case-insensitive)."""
    for line in text.splitlines():
        head, sep, rest = line.strip().partition(":")
        if sep and head.strip().upper() == name:
            return rest.strip()
    return None


def normalise(answer: str | None) -> str:
    """Answers compare after trimming, lower-casing and dropping a final full stop."""
    return (answer or "").strip().rstrip(".").strip().lower()


def check_question(
    question: str | None, parent: Task, s: Settings, answer: str | None = None
) -> str | None:
    """Why an evolved question is unusable, or None. With the stated `answer`: a question that
    states it ("... the answer is 14") is `leaked`, since a second prompt would then "agree" by
    copying it."""
    if question is None:
        return "unparsable"
    if len(question) < s.min_chars:
        return "too_short"
    if len(question) > s.max_chars:
        return "too_long"
    if any(not c.isprintable() or (s.ascii_only and not c.isascii()) for c in question):
        return "bad_charset"
    if "?" not in question and not _QUESTION_WORDS.search(question):
        return "no_question"
    if " ".join(question.split()).lower() == " ".join(parent.prompt.split()).lower():
        return "unchanged"
    stated = normalise(answer)
    if stated and re.search(_ANSWER_CUE + re.escape(stated) + r"(?!\w|\.\d)", question.lower()):
        return "leaked"
    return None


def is_program_task(task: Task) -> bool:
    return isinstance(task.params, dict) and isinstance(task.params.get("program"), str)


def evolve_prompt(op: str, task: Task) -> str:
    """The prompt asking the LLM to apply `op` to `task`."""
    spec = OPERATORS[op]
    if is_program_task(task):
        kind = "same" if spec.kind == "same" else "harder"
        return PROGRAM_TEMPLATE.format(
            instruction=PROGRAM_INSTRUCTIONS[kind], program=task.params["program"]
        )
    return EVOLVE_TEMPLATE.format(
        instruction=spec.instruction, prompt=task.prompt, answer=task.answer or ""
    )


def evolve_tasks(
    generator: Generator,
    family: Family,
    parents: list[Task],
    operators: list[str],
    n: int,
    rng: random.Random,
    rnd: int,
    settings: Settings | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Task], list[RejectedTask], dict[str, Any]]:
    """Up to `n` evolved tasks from `parents` (each candidate: a parent and an operator drawn
    from `rng`), with the rejected candidates and counts by operator and reason."""
    settings = settings or Settings()
    if unknown := [o for o in operators if o not in OPERATORS]:
        raise ValueError(f"llm_evolve operators: unknown {unknown}; known: {sorted(OPERATORS)}")
    usable = [p for p in parents if p.answer is not None]
    if not usable or not operators or n <= 0:
        return [], [], {"candidates": 0, "accepted": 0, "rejected": {}}
    jobs = [(rng.choice(usable), rng.choice(operators)) for _ in range(n)]
    sampling = Sampling(
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        stop_at_newline=False,
        seed=settings.seed,
    )
    outs = generator.generate([evolve_prompt(op, p) for p, op in jobs], 1, sampling)
    texts = [o[0].text if o else "" for o in outs]

    accepted: list[Task] = []
    rejects: list[RejectedTask] = []
    pending: list[tuple[Task, str, str, str]] = []  # (parent, op, question, stated answer)
    program_jobs: list[tuple[Task, str, str]] = []
    for (parent, op), text in zip(jobs, texts, strict=True):
        made_by = f"llm-evolve:{op}@{settings.model_name}"
        if is_program_task(parent):
            prog = read_field(text, "PROGRAM")
            if prog is None:
                rejects.append(_reject(parent, op, made_by, rnd, text[:80], "unparsable"))
            else:
                program_jobs.append((parent, op, prog))
            continue
        question, answer = read_field(text, "QUESTION"), read_field(text, "ANSWER")
        why = check_question(question, parent, settings, answer)
        if why is None and not answer:
            why = "no_answer"
        elif why is None and len(answer or "") > settings.max_answer_chars:
            why = "answer_too_long"
        elif why is None:
            why = _answer_rule(op, parent, question or "", answer or "")
        if why is not None:
            rejects.append(_reject(parent, op, made_by, rnd, question or text[:80], why))
        else:
            pending.append((parent, op, question or "", answer or ""))

    # Text tasks: a second, independent prompt re-derives the answer; the two must agree.
    if pending:
        solve_sampling = Sampling(
            temperature=0.0, max_new_tokens=64, stop_at_newline=False, seed=settings.seed + 1
        )
        solved = generator.generate(
            [SOLVE_TEMPLATE.format(prompt=q) for _, _, q, _ in pending], 1, solve_sampling
        )
        for (parent, op, question, answer), out in zip(pending, solved, strict=True):
            made_by = f"llm-evolve:{op}@{settings.model_name}"
            again = read_field(out[0].text if out else "", "ANSWER")
            if normalise(again) != normalise(answer):
                rejects.append(_reject(parent, op, made_by, rnd, question, "disagree"))
                continue
            gold = parent.answer if OPERATORS[op].kind == "same" else answer
            params = evolved_params(parent, op)
            bump = 1 if OPERATORS[op].kind == "harder" else 0
            accepted.append(
                _task(parent, question, gold, parent.difficulty + bump, params, made_by, rnd)
            )

    # Program tasks: the sandbox gives the gold; harder must mean more operations.
    if program_jobs:
        results = programs.run_programs([p for _, _, p in program_jobs])
        for (parent, op, prog), res in zip(program_jobs, results, strict=True):
            made_by = f"llm-evolve:{op}@{settings.model_name}"
            value, why = programs.gold_answer(res)
            if value is None:
                rejects.append(_reject(parent, op, made_by, rnd, prog, why))
                continue
            ops = programs.operation_count(prog)
            parent_ops = programs.operation_count(str(parent.params["program"]))
            if OPERATORS[op].kind == "same":
                if value != (parent.answer or "").strip():
                    rejects.append(_reject(parent, op, made_by, rnd, prog, "answer_changed"))
                    continue
            elif ops <= parent_ops:
                rejects.append(_reject(parent, op, made_by, rnd, prog, "not_harder"))
                continue
            if programs.canonical(prog) == str(parent.params["program"]):
                rejects.append(_reject(parent, op, made_by, rnd, prog, "unchanged"))
                continue
            if not isinstance(family, ProgramFamily):
                raise ValueError(
                    f"program tasks need the program family to evolve, got {family.name!r}"
                )
            task = family.from_program(prog, value)
            try:
                if family.solve(task)[1] != value:
                    raise ValueError("steps disagree")
            except ValueError:
                rejects.append(_reject(parent, op, made_by, rnd, prog, "reference_mismatch"))
                continue
            task.params |= {"verified_by": "sandbox", "evolved_with": op}
            task.parents, task.made_by, task.round = [parent.id], made_by, rnd
            accepted.append(task)

    kept: dict[str, Task] = {}
    for t in accepted:
        if t.id in exclude or t.id in kept:
            rejects.append(_reject_task(t, "duplicate"))
        else:
            kept[t.id] = t
    info = {
        "candidates": len(jobs),
        "accepted": len(kept),
        "by_operator": dict(
            sorted(Counter(t.made_by.split(":")[1].split("@")[0] for t in kept.values()).items())
        ),
        "rejected": dict(sorted(Counter(r.reason for r in rejects).items())),
    }
    return list(kept.values()), rejects, info


def _answer_rule(op: str, parent: Task, question: str, answer: str) -> str | None:
    """The operator's own rule on the stated answer (before the re-derivation)."""
    kind = OPERATORS[op].kind
    if kind == "same" and normalise(answer) != normalise(parent.answer):
        return "answer_changed"
    if kind == "backward":
        # The answer is a number of the parent, hidden: it occurs fewer times in the question.
        hidden = answer.strip()
        before = _NUMBER.findall(parent.prompt).count(hidden)
        if not before or _NUMBER.findall(question).count(hidden) >= before:
            return "backward_mismatch"
        if normalise(parent.answer) not in question.lower():
            return "backward_mismatch"
    return None


def evolved_params(parent: Task, op: str) -> dict[str, Any]:
    """An evolved text task's params: the parent's, less its dataset index, plus how it was
    verified. A question with a new answer (every operator but `rephrase`) no longer matches the
    parent's reasoning-gym metadata (countdown's scorer reads its numbers and target from there),
    so its metadata is dropped and it is scored against its own verified answer
    (`scoring: answer`, read by `GymFamily.verify`); a rephrase asks the parent's question, so
    the parent's metadata still scores it."""
    params = {k: v for k, v in parent.params.items() if k != "index"}
    if OPERATORS[op].kind != "same" and "metadata" in params:
        del params["metadata"]
        params["scoring"] = "answer"
    return params | {"verified_by": "llm-agreement", "evolved_with": op}


def _task(
    parent: Task,
    prompt: str,
    answer: str | None,
    difficulty: int,
    params: dict[str, Any],
    made_by: str,
    rnd: int,
) -> Task:
    return Task(
        id=stable_id(parent.family, prompt),
        family=parent.family,
        prompt=prompt,
        answer=answer,
        difficulty=difficulty,
        params=params,
        parents=[parent.id],
        made_by=made_by,
        round=rnd,
    )


def _reject(parent: Task, op: str, made_by: str, rnd: int, text: str, why: str) -> RejectedTask:
    stub = _task(parent, text, None, parent.difficulty, {}, made_by, rnd)
    return rejected(stub, why, f"from {parent.id} by {op}")


def _reject_task(task: Task, why: str) -> RejectedTask:
    return rejected(task, why, f"from {','.join(task.parents)}")
