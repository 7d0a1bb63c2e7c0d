"""LLM-driven task evolution (`tasks/llm_evolve.py`, `creator.llm_evolve`).

The LLM is a real OpenAI-compatible HTTP server on 127.0.0.1 (stdlib, ephemeral port, bounded in
requests and lifetime) whose replies are computed from the prompt: it rewrites reasoning-gym
`basic_arithmetic` questions and integer programs by each operator and does the arithmetic when
asked to solve. Parents chosen by a test get faulty replies instead (garbage, an empty or long
or non-ASCII question, a leaked answer, a disagreeing second answer, an HTTP 500, ...), and each
must be rejected for its own reason."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import operator
import random
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from small_run import TINIEST, cli_sets, nested

from reasonloop.cli import main
from reasonloop.config import ConfigError, ModelConfig, load_config, validate
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import read_records
from reasonloop.models.openai import OpenAIBackendError, OpenAIModel
from reasonloop.models.tiny import TinyModel
from reasonloop.serve import ReasonerServer
from reasonloop.tasks.families.program import ProgramFamily
from reasonloop.tasks.llm_evolve import (
    OPERATORS,
    PROGRAM_INSTRUCTIONS,
    Settings,
    check_question,
    evolve_prompt,
    evolve_tasks,
    evolved_params,
    normalise,
    read_field,
)
from reasonloop.tasks.registry import get_family
from reasonloop.tasks.reliability import RejectedTask
from reasonloop.types import Task, Trace

MODEL = "evolver"
KEY_ENV = "REASONLOOP_TEST_EVOLVE_KEY"
SECRET = "sk-evolve-" + "5c1e7b" * 6
HARDER = [o for o, spec in OPERATORS.items() if spec.kind == "harder"]

# ------------------------------------------------------------------ the arithmetic the LLM does

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def parse(expr: str) -> ast.Expression | None:
    try:
        return ast.parse(expr, mode="eval")
    except SyntaxError:
        return None


def evaluate(tree: ast.Expression, x: int = 0) -> str | None:
    """The exact integer value of an expression of integers, `+ - * / // %`, unary minus and the
    unknown `X`; None when it is not one (or not an integer)."""

    def ev(n: ast.AST) -> Fraction:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and type(n.value) is int:
            return Fraction(n.value)
        if isinstance(n, ast.Name) and n.id == "X":
            return Fraction(x)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return _BINOPS[type(n.op)](ev(n.left), ev(n.right))
        raise ValueError(ast.dump(n))

    try:
        v = ev(tree)
    except (ValueError, ZeroDivisionError):
        return None
    return str(v.numerator) if v.denominator == 1 else None


def value(expr: str) -> str | None:
    tree = parse(expr)
    return None if tree is None else evaluate(tree)


CALCULATE = re.compile(r"Calculate (.+)\.")
REPHRASED = re.compile(r"What is the value of (.+)\?")
BACKWARD = re.compile(r"If (.+) equals (-?\d+), what is X\?")
NUMBER = re.compile(r"-?\d+")


def rederive(question: str) -> str | None:
    """The answer of an evolved question, worked out here (the test's own ground truth)."""
    if m := CALCULATE.fullmatch(question) or REPHRASED.fullmatch(question):
        return value(m.group(1))
    if (m := BACKWARD.fullmatch(question)) and (tree := parse(m.group(1))) is not None:
        # One X in a + - * / expression: linear, so a small search finds the integer root.
        return next((str(x) for x in range(-1000, 1001) if evaluate(tree, x) == m.group(2)), None)
    return None


# ------------------------------------------------------------------ the scripted LLM server


class FakeLLM:
    """Replies to the three prompts of `llm_evolve` (rewrite a task, rewrite a program, solve)
    by inspecting them. `fault(parent)` names how to misbehave on a parent's prompt or program
    (None: behave). The request's `seed` picks the number a rewrite adds, as a seeded sampler
    would."""

    def __init__(self, fault: Callable[[str], str | None] = lambda _: None) -> None:
        self.fault = fault
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, Any], str | None]] = []  # path, body, auth
        self.disagree: set[str] = set()  # questions whose second answer is off by one
        self.failed: set[str] = set()  # parents whose first request got a 500
        self.models = [MODEL]  # what GET /v1/models lists (the preset's model_name)

    def answer(self, prompt: str, seed: int, auth: str | None) -> tuple[int, str]:
        """(HTTP status, the reply text or the error message)."""
        k = 2 + seed % 7
        if prompt.startswith("Solve the task."):
            question = _field(prompt, "TASK")
            got = rederive(question)
            with self.lock:
                if got is not None and question in self.disagree:
                    got = str(int(got) + 1)
            return 200, f"Let me work it out step by step.\nANSWER: {got or 'I am not sure.'}"
        if prompt.startswith("You rewrite Python"):
            return 200, self.rewrite_program(prompt, k)
        if prompt.startswith("You rewrite tasks."):
            parent = _field(prompt, "TASK")
            fault = self.fault(parent)
            if fault == "flaky":
                with self.lock:
                    first = parent not in self.failed
                    self.failed.add(parent)
                if first:
                    return 500, "the GPU fell over, try again"
            if fault == "echo_key":
                return 401, f"invalid credentials in header {auth}"
            return 200, self.rewrite_task(prompt, parent, fault, k)
        return 200, "I do not follow."

    def rewrite_task(self, prompt: str, parent: str, fault: str | None, k: int) -> str:
        op = next(name for name, spec in OPERATORS.items() if spec.instruction in prompt)
        old = _field(prompt, "ANSWER OF TASK")
        m = CALCULATE.fullmatch(parent)
        if fault == "garbage" or m is None:
            return "Sure! Here is a harder version of the task, now about trains."
        e = m.group(1)
        if OPERATORS[op].kind == "harder":
            new = {
                "add_constraints": f"( {e} ) + {k}",
                "deepen": f"( {e} ) * {k}",
                "concretise": f"( {e} ) - {k}",
                "increase_reasoning": f"( ( {e} ) + {k} ) * 2",
                "complicate_input": f"( {e} ) + {k} + {k}",
            }[op]
            question, ans = f"Calculate {new}.", value(new) or "?"
        elif op == "rephrase":
            question, ans = f"What is the value of {e}?", old
            if fault == "wrong_kind":
                ans = str(int(old) + 1)
        else:
            hidden = NUMBER.search(e)
            assert hidden is not None
            if fault == "wrong_kind":  # names a number of the task but hides nothing
                question, ans = f"If {e} equals {old}, what is X?", hidden.group()
            else:
                shown = e[: hidden.start()] + "X" + e[hidden.end() :]
                question, ans = f"If {shown} equals {old}, what is X?", hidden.group()
        if fault == "disagree":
            with self.lock:
                self.disagree.add(question)
        reply = {
            "empty": f"QUESTION:\nANSWER: {ans}",
            "too_long": "QUESTION: Calculate " + " + ".join(["1"] * 300) + ".\nANSWER: 300",
            "non_ascii": f"QUESTION: Calculate ( {e} ) \u00d7 2.\nANSWER: {ans}",
            "no_question": "QUESTION: Here are two numbers, 3 and 4.\nANSWER: 7",
            "unchanged": f"QUESTION: {parent}\nANSWER: {old}",
            "leaked": f"QUESTION: {question} (The answer is {ans}.)\nANSWER: {ans}",
            "no_answer": f"QUESTION: {question}",
            "long_answer": f"QUESTION: {question}\nANSWER: {'9' * 100}",
        }.get(fault or "", f"QUESTION: {question}\nANSWER: {ans}")
        return f"Here is the rewritten task.\n{reply}\nI hope this helps!"

    def rewrite_program(self, prompt: str, k: int) -> str:
        prog = _field(prompt, "EXPRESSION")
        same = PROGRAM_INSTRUCTIONS["same"] in prompt
        fault = self.fault(prog)
        out = {
            "garbage": "Here is a much better program for you!",
            "same_program": f"PROGRAM: {prog}",
            "div_zero": f"PROGRAM: ({prog})//0",
            "escape": "PROGRAM: __import__('os').system('id')",
            "too_large": "PROGRAM: 999999*999999",
            "changed": f"PROGRAM: ({prog})+1",
        }.get(fault or "", f"PROGRAM: {'0+' if same else ''}({prog}){'' if same else f'+{k}'}")
        return f"Sure.\n{out}"


def _field(prompt: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", prompt, re.MULTILINE)
    assert m is not None, prompt
    return m.group(1)


@contextmanager
def llm_server(
    llm: FakeLLM,
    max_requests: int = 600,
    lifetime_s: float = 240.0,
    sock: socket.socket | None = None,
) -> Iterator[str]:
    """Serve `llm` at http://127.0.0.1:PORT/v1 (/completions and /chat/completions); it answers
    503 after `max_requests` and shuts itself down after `lifetime_s`. `sock`: a bound socket
    to listen on (keeps a port reserved across a test)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            auth = self.headers.get("Authorization")
            with llm.lock:
                llm.requests.append((self.path, body, auth))
                spent = len(llm.requests) > max_requests
            chat = self.path == "/v1/chat/completions"
            if spent or self.path not in ("/v1/completions", "/v1/chat/completions"):
                status, text = (503, "request budget spent") if spent else (404, "no such route")
            else:
                prompt = body["messages"][0]["content"] if chat else body["prompt"]
                status, text = llm.answer(prompt, int(body.get("seed", 0)), auth)
            if status == 200:
                choice = (
                    {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                )
                out = {
                    "object": "chat.completion" if chat else "text_completion",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop", **choice}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": len(text) + 1},
                }
            else:
                out = {"error": {"message": text, "type": "server_error"}}
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # the run's up-front check; not counted as a request
            found = self.path == "/v1/models"
            out = (
                {"object": "list", "data": [{"id": m, "object": "model"} for m in llm.models]}
                if found
                else {"error": {"message": "no such route", "type": "server_error"}}
            )
            data = json.dumps(out).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=sock is None)
    if sock is not None:
        httpd.socket.close()
        httpd.socket = sock
        httpd.server_address = sock.getsockname()
        httpd.server_activate()
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stop = threading.Timer(lifetime_s, httpd.shutdown)
    stop.daemon = True
    stop.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        stop.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def client(url: str, **kw: Any) -> OpenAIModel:
    return OpenAIModel(url, MODEL, retries=2, backoff_s=0.01, **kw)


@pytest.fixture(scope="module")
def gym() -> Any:
    return get_family("gym:basic_arithmetic")


def gym_parents(family: Any, n: int, seed: int = 0) -> list[Task]:
    """`n` distinct gym tasks of levels 0 and 1 (small numbers: the backward search stays short)."""
    rng, out = random.Random(seed), {}
    while len(out) < n:
        t = family.make(rng, len(out) % 2)
        out.setdefault(t.prompt, t)
    return list(out.values())


def source(r: RejectedTask, by_id: dict[str, Task]) -> tuple[Task, str]:
    """The parent (detail: `from <id>[ by <op>]`) and operator (`made_by`) of a rejection."""
    m = re.fullmatch(r"from (\w+)(?: by \w+)?", r.detail)
    assert m is not None, r.detail
    return by_id[m.group(1)], r.made_by.removeprefix("llm-evolve:").removesuffix(f"@{MODEL}")


def records(items: list[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(x) for x in items]


# ------------------------------------------------------------------ 1. by hand


def test_read_field_finds_the_line_in_chatty_untrusted_text():
    text = (
        "Sure! I rewrote it.\n  question :  What is 3 + 4?  \nANSWER OF TASK: 9\n"
        "ANSWER: 7\nANSWER: 8\nHope this helps."
    )
    assert read_field(text, "QUESTION") == "What is 3 + 4?"
    assert read_field(text, "ANSWER") == "7"  # the first ANSWER line; not "ANSWER OF TASK"
    assert read_field("ANSWER:", "ANSWER") == ""
    assert read_field("QUESTION What is 3 + 4?", "QUESTION") is None  # no colon
    assert read_field("The QUESTION: is hard", "QUESTION") is None  # not at a line start
    assert read_field("", "QUESTION") is None
    assert (
        read_field("QUESTION: \u00bfQu\u00e9 es 3 + 4?", "QUESTION") == "\u00bfQu\u00e9 es 3 + 4?"
    )


def test_normalise_trims_case_and_a_final_full_stop():
    assert normalise("  Seven. ") == normalise("seven") == "seven"
    assert normalise("-8.") == "-8"
    assert normalise("3.5") == "3.5"  # a decimal point is not a full stop
    assert normalise(None) == normalise("") == normalise(" . ") == ""
    assert normalise("7") != normalise("-7")


PARENT = Task(
    id="p", family="gym:basic_arithmetic", prompt="Calculate 70 - 63.", answer="7", difficulty=0
)


@pytest.mark.parametrize(
    ("question", "answer", "why"),
    [
        (None, None, "unparsable"),
        ("", None, "too_short"),
        ("What?", None, "too_short"),
        ("Calculate " + " + ".join(["1"] * 300) + ".", "300", "too_long"),
        ("Calculate ( 70 - 63 ) \u00d7 2.", "14", "bad_charset"),
        ("Calculate 70 -\t63 + 1.", "8", "bad_charset"),  # a tab is not printable
        ("Calculate 70 - 63 + 1.\x00", "8", "bad_charset"),
        ("Here are two numbers, 70 and 63.", "7", "no_question"),
        ("  calculate 70  -  63. ", "7", "unchanged"),  # the parent, respaced and lower-cased
        ("Calculate ( 70 - 63 ) * 2. The answer is 14.", "14", "leaked"),
        ("What is 70 - 63 + 1? (answer: 8)", "8", "leaked"),
        ("Calculate ( 70 - 63 ) * 2.", "14", None),
        ("Calculate ( 70 - 63 ) * 2?", None, None),  # no answer to leak: the caller's check
        ("What is 70 - 63, given the answer is 14 for 7 * 2?", "7", None),  # not its answer
        ("Calculate 70 - 63 - 0.", "7", None),  # 7 inside 70 is no leak
    ],
)
def test_check_question_on_untrusted_text(question, answer, why):
    assert check_question(question, PARENT, Settings(), answer) == why


def test_check_question_settings_decide_length_and_charset():
    wide = Settings(ascii_only=False, max_chars=40, min_chars=3)
    assert check_question("Calculate ( 70 - 63 ) \u00d7 2.", PARENT, wide) is None
    assert check_question("Calculate ( 70 - 63 ) \u00d7 2 + 1 + 1 + 1 + 1.", PARENT, wide) == (
        "too_long"
    )
    assert check_question("Why?", PARENT, wide) is None


def test_evolve_prompt_per_operator_names_the_parent_task():
    prompts = {op: evolve_prompt(op, PARENT) for op in OPERATORS}
    assert len(set(prompts.values())) == len(OPERATORS)  # each operator asks its own thing
    for op, p in prompts.items():
        assert f"TASK: {PARENT.prompt}\n" in p and "ANSWER OF TASK: 7\n" in p
        assert OPERATORS[op].instruction in p and "QUESTION:" in p and "ANSWER:" in p
    prog = ProgramFamily().from_program("3+4*2", "11")
    for op in OPERATORS:
        p = evolve_prompt(op, prog)
        kind = "same" if op == "rephrase" else "harder"
        assert "EXPRESSION: 3+4*2\n" in p and PROGRAM_INSTRUCTIONS[kind] in p and "PROGRAM:" in p
    with pytest.raises(KeyError):
        evolve_prompt("explode", PARENT)


# ------------------------------------------------------------------ 2. against a server


def test_evolved_gym_tasks_carry_lineage_and_their_answers_verify(gym):
    parents = gym_parents(gym, 10)
    llm = FakeLLM()
    by_id = {p.id: p for p in parents}
    with llm_server(llm) as url:
        model = client(url)
        tasks, rejects, info = evolve_tasks(
            model, gym, parents, list(OPERATORS), 40, random.Random(1), 3, Settings(MODEL)
        )
        model.close()
    assert {r.reason for r in rejects} <= {"duplicate"}  # a well-behaved LLM: all verify
    assert info["candidates"] == 40 and info["accepted"] == len(tasks) >= 20
    assert info["accepted"] + sum(info["rejected"].values()) == info["candidates"]
    ops = {t.made_by for t in tasks}
    assert ops == {f"llm-evolve:{op}@{MODEL}" for op in OPERATORS}
    assert sum(info["by_operator"].values()) == len(tasks)
    for t in tasks:
        op = t.made_by.removeprefix("llm-evolve:").removesuffix(f"@{MODEL}")
        (pid,) = t.parents
        parent = by_id[pid]
        assert t.round == 3 and t.family == gym.name and t.id not in by_id
        assert t.params["verified_by"] == "llm-agreement" and t.params["evolved_with"] == op
        assert "index" not in t.params
        if op == "rephrase":  # the parent's question, reworded: its dataset metadata still holds
            assert t.params["metadata"] == parent.params["metadata"] and "scoring" not in t.params
        else:  # a new question: scored against its own verified answer
            assert "metadata" not in t.params and t.params["scoring"] == "answer"
        gold = rederive(t.prompt)
        assert gold is not None and t.answer == gold
        assert gym.verify(t, gold) == 1.0 and gym.verify(t, str(int(gold) + 1)) == 0.0
        if op == "rephrase":
            assert t.answer == parent.answer and t.difficulty == parent.difficulty
        elif op == "backward":
            assert t.answer in NUMBER.findall(parent.prompt) and parent.answer in t.prompt
        else:
            assert t.difficulty == parent.difficulty + 1
    # Each candidate: one rewrite, then one independent solve (duplicates are found after it).
    sent = [body["prompt"] for _, body, _ in llm.requests]
    assert sum(p.startswith("You rewrite tasks.") for p in sent) == 40
    assert sum(p.startswith("Solve the task.") for p in sent) == 40
    assert all(body["model"] == MODEL for _, body, _ in llm.requests)


def test_a_harder_countdown_task_is_scored_by_its_own_answer_not_its_parents_metadata():
    """countdown's scorer checks an expression against the numbers and target of the entry's
    metadata; an evolved question has other numbers, so the parent's metadata would refuse its
    right answer and could accept the parent's."""
    family = get_family("gym:countdown")
    parent = family.make(random.Random(0), 0)
    question = "Calculate 24 using all of these numbers: 2, 3, 4, 1. Each number at most once."
    answer = "2*3*4*1"
    stale = dataclasses.replace(
        parent, prompt=question, answer=answer, params=dict(parent.params) | {"index": -1}
    )
    assert family.verify(stale, answer) < 1.0  # what keeping the parent's metadata did
    assert family.verify(stale, parent.answer) == 1.0
    for op in ("deepen", "backward"):
        evolved = dataclasses.replace(
            parent, prompt=question, answer=answer, params=evolved_params(parent, op)
        )
        assert family.verify(evolved, answer) == 1.0
        assert family.verify(evolved, " 2*3*4*1 ") == 1.0
        assert family.verify(evolved, parent.answer) == 0.0
        assert family.verify(evolved, None) == 0.0
    numeric = dataclasses.replace(evolved, answer="1/2")
    assert family.verify(numeric, "0.5") == 1.0 and family.verify(numeric, "0.51") == 0.0
    same = evolved_params(parent, "rephrase")
    assert same["metadata"] == parent.params["metadata"] and "scoring" not in same


# What each faulty reply must be rejected as; `flaky` (one HTTP 500) must still be accepted.
TEXT_FAULTS = {
    "garbage": "unparsable",
    "empty": "too_short",
    "too_long": "too_long",
    "non_ascii": "bad_charset",
    "no_question": "no_question",
    "unchanged": "unchanged",
    "leaked": "leaked",
    "no_answer": "no_answer",
    "long_answer": "answer_too_long",
    "disagree": "disagree",
    "flaky": None,
}


def test_each_faulty_reply_is_rejected_for_its_own_reason(gym):
    parents = gym_parents(gym, len(TEXT_FAULTS) + 3, seed=2)
    fault_of = dict(zip((p.prompt for p in parents), TEXT_FAULTS, strict=False))
    llm = FakeLLM(fault_of.get)
    by_id = {p.id: p for p in parents}
    with llm_server(llm) as url:
        model = client(url)
        tasks, rejects, info = evolve_tasks(
            model, gym, parents, list(OPERATORS), 80, random.Random(0), 1, Settings(MODEL)
        )
        model.close()
    drawn = {fault_of.get(p.prompt) for p in parents}
    assert drawn == set(TEXT_FAULTS) | {None}  # every fault was asked for at least once
    for r in rejects:
        parent, op = source(r, by_id)
        want = TEXT_FAULTS.get(fault_of.get(parent.prompt) or "")
        assert r.reason == (want or "duplicate"), (r.reason, parent.prompt, op)
        assert op in OPERATORS and r.made_by == f"llm-evolve:{op}@{MODEL}" and r.round == 1
    assert {r.reason for r in rejects} - {"duplicate"} == {v for v in TEXT_FAULTS.values() if v}
    assert info["rejected"] == {
        why: sum(r.reason == why for r in rejects) for why in {r.reason for r in rejects}
    }
    assert info["accepted"] + len(rejects) == info["candidates"] == 80
    kept_from = {fault_of.get(by_id[t.parents[0]].prompt) for t in tasks}
    assert kept_from == {None, "flaky"}  # the 500 was retried, and that parent's rewrite kept
    flaky = next(p for p, f in fault_of.items() if f == "flaky")
    assert llm.failed == {flaky}
    rewrites = [b["prompt"] for _, b, _ in llm.requests if b["prompt"].startswith("You rewrite")]
    assert len(rewrites) == 80 + 1  # the one failed request, sent again


def test_rephrase_must_keep_the_answer_and_backward_must_hide_a_number(gym):
    parents = gym_parents(gym, 8, seed=4)
    wrong = {p.prompt for p in parents[:4]}
    llm = FakeLLM(lambda p: "wrong_kind" if p in wrong else None)
    by_id = {p.id: p for p in parents}
    with llm_server(llm) as url:
        model = client(url)
        tasks, rejects, _ = evolve_tasks(
            model, gym, parents, ["rephrase", "backward"], 40, random.Random(5), 2, Settings(MODEL)
        )
        model.close()
    want = {"rephrase": "answer_changed", "backward": "backward_mismatch"}
    seen = set()
    for r in rejects:
        parent, op = source(r, by_id)
        seen.add(r.reason)
        assert r.reason == (want[op] if parent.prompt in wrong else "duplicate"), r
    assert seen - {"duplicate"} == set(want.values())
    assert tasks and all(by_id[t.parents[0]].prompt not in wrong for t in tasks)
    for t in tasks:
        parent = by_id[t.parents[0]]
        if t.made_by.startswith("llm-evolve:rephrase@"):
            assert t.answer == parent.answer == rederive(t.prompt)
        else:  # the hidden number is the answer, and the parent's answer is given
            assert t.answer == rederive(t.prompt) and parent.answer in t.prompt
            hidden = NUMBER.findall(t.prompt).count(t.answer)
            assert hidden < NUMBER.findall(parent.prompt).count(t.answer)


# Program rewrites by fault: what a complexity operator and `rephrase` must be rejected as.
PROGRAM_FAULTS = {
    "garbage": ("unparsable", "unparsable"),
    "same_program": ("not_harder", "unchanged"),
    "div_zero": ("sandbox_error", "sandbox_error"),
    "escape": ("invalid_program", "invalid_program"),
    "too_large": ("too_large", "too_large"),
    "changed": (None, "answer_changed"),  # (P)+1 is harder, but not the same value
}


def test_program_rewrites_are_verified_in_the_sandbox():
    family = ProgramFamily()
    rng = random.Random(0)
    parents = list({t.id: t for t in (family.make(rng, 1 + i % 3) for i in range(12))}.values())
    fault_of = dict(zip((p.params["program"] for p in parents), PROGRAM_FAULTS, strict=False))
    llm = FakeLLM(fault_of.get)
    by_id = {p.id: p for p in parents}
    ops = ["add_constraints", "rephrase"]
    with llm_server(llm) as url:
        model = client(url)
        tasks, rejects, info = evolve_tasks(
            model, family, parents, ops, 48, random.Random(2), 4, Settings(MODEL)
        )
        model.close()
    seen = set()
    for r in rejects:
        parent, op = source(r, by_id)
        fault = fault_of.get(parent.params["program"])
        want = PROGRAM_FAULTS[fault][op == "rephrase"] if fault else None
        assert r.reason == (want or "duplicate"), (r, fault)
        seen.add(r.reason)
    asked = {
        (
            fault_of.get(_field(b["prompt"], "EXPRESSION")),
            PROGRAM_INSTRUCTIONS["same"] in b["prompt"],
        )
        for _, b, _ in llm.requests
    }
    assert {f for f, _ in asked} == set(PROGRAM_FAULTS) | {None}  # every fault was drawn
    assert seen - {"duplicate"} == {PROGRAM_FAULTS[f][same] for f, same in asked if f} - {None}
    assert info["accepted"] + len(rejects) == 48
    # No solve prompts: a program's gold comes from the sandbox, not from the LLM.
    assert not any(b["prompt"].startswith("Solve") for _, b, _ in llm.requests)
    assert {t.made_by for t in tasks} == {f"llm-evolve:{op}@{MODEL}" for op in ops}
    for t in tasks:
        parent = by_id[t.parents[0]]
        prog = t.params["program"]
        assert t.prompt == prog + "=" and t.round == 4 and t.params["verified_by"] == "sandbox"
        assert t.answer == value(prog) and family.verify(t, t.answer) == 1.0
        assert family.verify(t, str(int(t.answer) + 1)) == 0.0
        if t.made_by.startswith("llm-evolve:rephrase@"):
            assert t.answer == parent.answer
        else:
            assert t.params["ops"] > parent.params["ops"] and t.difficulty == t.params["ops"]


def test_the_same_seed_gives_the_same_tasks_over_the_chat_api(gym):
    parents = gym_parents(gym, 6, seed=6)
    llm = FakeLLM()

    def evolve(seed: int) -> tuple[list[Task], list[RejectedTask], list[str]]:
        model, before = client(url, api="chat"), len(llm.requests)
        try:
            settings = Settings(MODEL, seed=seed)
            got = evolve_tasks(model, gym, parents, HARDER, 12, random.Random(0), 1, settings)
        finally:
            model.close()
        asked = sorted(
            b["messages"][0]["content"]
            for _, b, _ in llm.requests[before:]
            if b["messages"][0]["content"].startswith("You rewrite")
        )
        return got[0], got[1], asked

    with llm_server(llm) as url:
        first, again, other = evolve(7), evolve(7), evolve(8)
    assert {path for path, _, _ in llm.requests} == {"/v1/chat/completions"}
    assert first[0] and records(first[0]) == records(again[0])
    assert records(first[1]) == records(again[1])
    # The rng draws the same parents and operators; the other seed asks the LLM for other
    # samples (the server honours the request's seed), so other questions come back.
    assert first[2] == other[2]
    assert {t.prompt for t in first[0]} != {t.prompt for t in other[0]}


def test_the_api_key_reaches_the_server_but_no_record_or_error(gym, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    parents = gym_parents(gym, 4, seed=8)
    echo = parents[0].prompt
    llm = FakeLLM(lambda p: "echo_key" if p == echo else None)
    with llm_server(llm) as url:
        model = client(url, api_key_env=KEY_ENV)
        tasks, rejects, _ = evolve_tasks(
            model, gym, parents[1:], list(OPERATORS), 12, random.Random(0), 1, Settings(MODEL)
        )
        # A careless server that echoes the request's Authorization header in its error.
        with pytest.raises(OpenAIBackendError, match=r"HTTP 401: invalid credentials") as e:
            evolve_tasks(model, gym, parents[:1], ["deepen"], 1, random.Random(0), 1)
        model.close()
    assert tasks and {a for _, _, a in llm.requests} == {f"Bearer {SECRET}"}
    assert "[redacted]" in str(e.value)
    shown = [json.dumps(records(tasks) + records(rejects)), str(e.value), repr(model), caplog.text]
    assert not any(SECRET in text for text in shown)


def test_an_untrained_model_behind_reasonloop_serve_gets_every_candidate_rejected(gym):
    # The real server the docs name as an endpoint, over a tiny model that writes noise.
    tiny = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=512), seed=0)
    parents = gym_parents(gym, 3)
    with ReasonerServer(tiny, "tiny", batch_wait_ms=5).start() as srv:
        model = OpenAIModel(srv.url, "tiny", retries=0)
        settings = Settings("tiny", max_new_tokens=32)
        tasks, rejects, info = evolve_tasks(
            model, gym, parents, ["deepen", "rephrase"], 4, random.Random(0), 1, settings
        )
        model.close()
    assert tasks == [] and info["candidates"] == 4
    assert [r.reason for r in rejects] == ["unparsable"] * 4
    assert all(r.made_by.endswith("@tiny") for r in rejects)


# ------------------------------------------------------------------ 3. in the loop

LOOP_SIZES = TINIEST | {"tasks.seed_levels": [1, 2], "tasks.heldout_levels": [1, 2, 3]}
# Per family: the faults the server cycles through (by a hash of the parent), and the reason
# each must give in the loop's records.
LOOP_FAULTS: dict[str, dict[str | None, str | None]] = {
    "gym:basic_arithmetic": {None: None, "garbage": "unparsable", "disagree": "disagree"},
    "program": {None: None, "garbage": "unparsable", "div_zero": "sandbox_error"},
}


def loop_fault(family: str) -> Callable[[str], str | None]:
    kinds = list(LOOP_FAULTS[family]) + [None]  # about half the parents behave

    def fault(parent: str) -> str | None:
        return kinds[int(hashlib.sha256(parent.encode()).hexdigest(), 16) % len(kinds)]

    return fault


@pytest.fixture(scope="module", params=list(LOOP_FAULTS))
def evolved_run(request, tmp_path_factory) -> tuple[str, Path, FakeLLM, dict[str, Any]]:
    """Two rounds of the evol-instruct preset at its tiniest, its LLM the scripted server
    (every round's tasks offered for rewriting: share 1), on reasoning-gym and on programs."""
    family = request.param
    llm = FakeLLM(loop_fault(family))
    out = tmp_path_factory.mktemp("evolved") / "run"
    with pytest.MonkeyPatch.context() as mp, llm_server(llm) as url:
        mp.setenv(KEY_ENV, SECRET)
        flat = LOOP_SIZES | {
            "rounds": 2,
            "seed": 3,
            "tasks.family": family,
            "creator.llm_evolve.base_url": url,
            "creator.llm_evolve.api_key_env": KEY_ENV,
            "creator.llm_evolve.share": 1.0,
        }
        cfg = load_config("evol-instruct", None, nested(flat))
        summary = run_loop(cfg, out, show_progress=False, log=lambda _: None)
    assert summary["complete"]
    return family, out, llm, summary


def test_a_run_records_evolved_tasks_with_lineage_and_rejections_with_reasons(evolved_run):
    family, out, llm, summary = evolved_run
    assert ["llm_evolve" not in m for m in summary["rounds"]] == [True, False, False]
    assert read_records(out / "rounds/r000/rejected_tasks.parquet", RejectedTask) == []
    evolved_all, rejected_all = [], []
    for r in (1, 2):
        d = out / "rounds" / f"r{r:03d}"
        info = summary["rounds"][r]["llm_evolve"]
        tasks = read_records(d / "tasks.parquet", Task)
        rejects = read_records(d / "rejected_tasks.parquet", RejectedTask)
        evolved = [t for t in tasks if t.made_by.startswith("llm-evolve:")]
        by_id = {t.id: t for t in tasks if not t.made_by.startswith("llm-evolve:")}
        assert info["candidates"] == 8 == info["accepted"] + len(rejects)
        assert info["rejected"] == dict(Counter(r.reason for r in rejects))
        assert info["accepted"] == len(evolved) == sum(info["by_operator"].values())
        for rej in rejects:
            parent, op = source(rej, by_id)  # every rejection names a parent of the round
            want = LOOP_FAULTS[family][loop_fault(family)(_parent_key(parent))]
            assert rej.reason == (want or "duplicate") and rej.round == r and op in OPERATORS
        for t in evolved:
            parent = by_id[t.parents[0]]  # the parent is a stored record of the same round
            assert loop_fault(family)(_parent_key(parent)) is None
            assert t.round == r and t.made_by.endswith(f"@{MODEL}")
            if family == "program":
                assert t.params["verified_by"] == "sandbox"
                assert t.answer == value(t.params["program"])
            else:
                assert t.params["verified_by"] == "llm-agreement"
                assert t.answer == rederive(t.prompt)
        solved = {tr.task_id for tr in read_records(d / "traces.parquet", Trace)}
        assert {t.id for t in evolved} <= solved  # the Reasoner was set the evolved tasks
        evolved_all += evolved
        rejected_all += rejects
    assert evolved_all and {r.reason for r in rejected_all} - {"duplicate"} == {
        why for why in LOOP_FAULTS[family].values() if why
    }
    # The key went to the server and nowhere else: not in a record, the config or the logs.
    assert {auth for _, _, auth in llm.requests} == {f"Bearer {SECRET}"}
    assert KEY_ENV in (out / "config.yaml").read_text()
    for f in out.rglob("*"):
        if f.suffix == ".parquet":
            text = json.dumps(pq.read_table(f).to_pylist(), default=str)
        elif f.is_file():
            text = f.read_bytes().decode("latin-1")
        else:
            continue
        assert SECRET not in text, f


def _parent_key(task: Task) -> str:
    """What the server's fault rule reads: the task's prompt, or a program task's program."""
    return task.params["program"] if "program" in task.params else task.prompt


def test_llm_evolve_config_errors_name_the_field(tmp_path, capsys):
    url = {"base_url": "http://127.0.0.1:8000/v1"}
    cases = [
        ({"enabled": True}, "creator.llm_evolve.enabled needs base_url"),
        ({"enabled": True, **url}, "creator.llm_evolve.enabled needs base_url .* model_name"),
        (
            {"operators": ["deepen", "explode"]},
            r"creator.llm_evolve.operators: unknown \['explode'\]",
        ),
        ({"enabled": True, "model_name": "m", "operators": [], **url}, "operators: empty"),
        ({"share": 0}, r"creator.llm_evolve.share"),
        ({"api": "grpc"}, r"creator.llm_evolve.api"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate({"creator": {"llm_evolve": section}}, "test")
    # Through the command line: exit 2, the field named, nothing written.
    for setting, message in [
        ("creator.llm_evolve.base_url=null", "creator.llm_evolve.enabled needs base_url"),
        ("creator.llm_evolve.operators=[deepen,explode]", "unknown ['explode']"),
    ]:
        out = tmp_path / "run"
        assert main(["run", "--preset", "evol-instruct", "--out", str(out), "--set", setting]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
        assert not out.exists()


def test_a_down_endpoint_stops_the_run_before_it_writes_anything(tmp_path, capsys):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = sock.getsockname()[1]
    out = tmp_path / "run"
    argv = ["run", "--preset", "evol-instruct", "--out", str(out), "--quiet", "--rounds", "1"]
    argv += cli_sets(LOOP_SIZES) + [
        "--set",
        f"creator.llm_evolve.base_url=http://127.0.0.1:{port}/v1",
    ]
    try:
        assert main(argv) == 2  # a config error: the field, the URL, what failed
        got = capsys.readouterr()
        assert "Traceback" not in got.err + got.out
        (line,) = [x for x in got.err.splitlines() if x.startswith("error: ")]
        assert line.startswith("error: creator.llm_evolve.base_url ")
        assert f"GET http://127.0.0.1:{port}/v1/models" in line and "refused" in line
        assert not out.exists()  # found before round 0, not after it
        llm = FakeLLM()
        llm.models = ["someone-else"]
        with llm_server(llm, sock=sock):  # up, but serving another model: named, nothing run
            assert main(argv) == 2
            line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
            assert "does not serve model 'evolver'" in line[0] and "someone-else" in line[0]
            assert not out.exists() and not llm.requests
            llm.models = [MODEL]  # the right model: the same command runs
            assert main(argv) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["complete"] and summary["rounds"][1]["llm_evolve"]["accepted"] > 0
    finally:
        sock.close()
