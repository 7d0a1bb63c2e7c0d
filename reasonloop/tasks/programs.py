"""Small integer programs (arithmetic expressions) as tasks, with their gold answers obtained by
running them in the sandbox, many programs to one sandbox process.

A program is one Python expression over small non-negative integer literals, `+ - * // % **`,
unary minus and parentheses, at most `MAX_CHARS` characters: `12+7*3`, `(4-9)*2`. It is the form
both our generator (`tasks/families/program.py`) and the learned proposer
(`tasks/proposer.py`) write, and the form a character-level model can read.

Text that claims to be a program is untrusted (a model wrote it). In this process it is only
*parsed* (`ast.parse`, which executes nothing) to check the grammar and to write the reference
steps; its value comes from :func:`run_programs`, which executes it in
`reasonloop.sandbox.run_code`, never here. The reference steps (`reduce_steps`) are computed by
a small interpreter of the checked tree with a bound on every intermediate, after the sandbox
has given the answer, and must agree with it.

Batching: one sandbox process evaluates a whole list and prints one JSON line per program as it
finishes. A program that kills the process (time, memory, output) is the one after the last
line printed: it gets the sandbox's status as its own, and the rest of the list goes to a fresh
process. So N programs with b bad ones cost b + 1 processes, not N.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass

from reasonloop.sandbox import Limits, SandboxResult, run_code

MAX_CHARS = 48
"""Longer program text is rejected before it reaches the sandbox."""
MAX_ABS = 10**9
"""Answers and reference intermediates beyond this are rejected (`too_large`)."""
CHARSET = frozenset("0123456789+-*/%() ")

_OPS: dict[type, str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}

# Evaluated inside the sandbox: one line per program, flushed, so a kill says which one.
_BATCH_SCRIPT = r"""
import json, sys
progs = json.loads(sys.stdin.read())
for p in progs:
    try:
        v = eval(compile(p, "<program>", "eval"), {"__builtins__": {}}, {})
        if isinstance(v, bool) or not isinstance(v, int):
            r = ["error", "value is not an int: " + type(v).__name__]
        else:
            r = ["ok", str(v)]
    except MemoryError:
        r = ["memory", "MemoryError"]
    except Exception as e:
        r = ["error", type(e).__name__ + ": " + str(e)[:80]]
    sys.stdout.write(json.dumps(r) + "\n")
    sys.stdout.flush()
"""


class ProgramRejected(ValueError):
    """A program that ran but does not make a task of a family: `reason` is the short name
    recorded in `rejected_tasks.parquet` (`trivial`, `reference_mismatch`, `off_family`, ...),
    the message says what was expected."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class ProgramResult:
    """How one program ran: `status` is the sandbox's kind (ok, timeout, memory, error,
    output_limit, blocked) or, before the sandbox, `invalid`; `value` is the printed integer
    when ok."""

    status: str
    value: str | None
    message: str


def check_program(text: object) -> str | None:
    """Why `text` is not a program of our grammar (a short reason), or None when it is."""
    if not isinstance(text, str):
        return f"not text ({type(text).__name__})"
    if not text.strip():
        return "empty"
    if len(text) > MAX_CHARS:
        return f"longer than {MAX_CHARS} characters"
    if bad := sorted(set(text) - CHARSET):
        return f"characters outside the grammar: {''.join(bad)!r}"
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not a Python expression"
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int):
                return "only integer literals"
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _OPS:
                return f"operator {type(node.op).__name__} not allowed"
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub):
                return "only unary minus"
        elif not isinstance(node, (ast.Expression, *(_OPS), ast.USub)):
            return f"{type(node).__name__} not allowed"
    return None


def operation_count(text: str) -> int:
    """Binary operations in a checked program: its difficulty measure."""
    return sum(isinstance(n, ast.BinOp) for n in ast.walk(ast.parse(text.strip(), mode="eval")))


def binary_operators(text: str) -> set[str]:
    """The binary operators a checked program uses, read from its tree (so `**` is not also
    `*`, nor a unary minus a `-`)."""
    tree = ast.parse(text.strip(), mode="eval")
    return {_OPS[type(n.op)] for n in ast.walk(tree) if isinstance(n, ast.BinOp)}


def canonical(text: str) -> str:
    """The program without spaces (the form prompts use)."""
    return text.replace(" ", "")


def reduce_program(text: str) -> tuple[list[str], int]:
    """The reference trace of a checked program and its value: one `a op b=c` step per binary
    operation, innermost first, left to right (Python's own order). The value is the whole
    expression's, which is not the last step's when a unary minus applies on top (`-(2+3)`) or
    there is no step (`(5)`). Raises ValueError when an intermediate leaves +-MAX_ABS or an
    exponent is negative or above 30 (the sandbox has the final say on the answer; this only
    writes the steps)."""
    steps: list[str] = []

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return int(node.value)
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand)
        assert isinstance(node, ast.BinOp)
        a, b = ev(node.left), ev(node.right)
        op = _OPS[type(node.op)]
        if op == "**" and not 0 <= b <= 30:
            raise ValueError(f"exponent {b} outside 0..30")
        if op in ("//", "%") and b == 0:
            raise ValueError("division by zero")
        c = {
            "+": lambda: a + b,
            "-": lambda: a - b,
            "*": lambda: a * b,
            "//": lambda: a // b,
            "%": lambda: a % b,
            "**": lambda: a**b,
        }[op]()
        if abs(c) > MAX_ABS:
            raise ValueError(f"intermediate {op} result beyond {MAX_ABS}")
        steps.append(f"{a}{op}{b}={c}")
        return c

    value = ev(ast.parse(text.strip(), mode="eval"))
    return steps, value


def reduce_steps(text: str) -> list[str]:
    """The steps of `reduce_program`."""
    return reduce_program(text)[0]


def _parse_lines(stdout: str) -> list[tuple[str, str]]:
    out = []
    for line in stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
            break
        out.append((row[0], row[1]))
    return out


def run_programs(
    programs: list[str], limits: Limits | None = None, batch: int = 256
) -> list[ProgramResult]:
    """Each program's result, in order: invalid ones without running, the rest in the sandbox
    (`batch` programs to a process; a program that kills its process gets that status).

    `limits` apply to each process (default: 2 s CPU, 4 s wall, 256 MB)."""
    limits = limits or Limits(cpu_seconds=2, wall_seconds=4, memory_mb=256, output_bytes=200_000)
    results: list[ProgramResult | None] = [None] * len(programs)
    todo: list[int] = []
    for i, p in enumerate(programs):
        why = check_program(p)
        if why is None:
            todo.append(i)
        else:
            results[i] = ProgramResult("invalid", None, why)
    while todo:
        chunk = todo[:batch]
        res: SandboxResult = run_code(
            _BATCH_SCRIPT, stdin=json.dumps([programs[i].strip() for i in chunk]), limits=limits
        )
        done = _parse_lines(res.stdout)[: len(chunk)]
        for i, (status, text) in zip(chunk, done, strict=False):
            if status == "ok":
                results[i] = ProgramResult("ok", text, "ran")
            else:
                results[i] = ProgramResult(status, None, text)
        rest = chunk[len(done) :]
        if rest and res.status != "ok":
            # The process died on this one: the sandbox's verdict is its verdict.
            results[rest[0]] = ProgramResult(res.status, None, res.message)
            rest = rest[1:]
        elif rest:  # exited cleanly yet skipped some: never trust silence
            for i in rest:
                results[i] = ProgramResult("error", None, "no result printed")
            rest = []
        todo = rest + todo[batch:]
    return [r if r is not None else ProgramResult("error", None, "not run") for r in results]


def gold_answer(result: ProgramResult, max_abs: int = MAX_ABS) -> tuple[str | None, str]:
    """(answer, "") for a usable result, else (None, rejection reason): the sandbox's kind
    (`sandbox_timeout`, `sandbox_memory`, `sandbox_error`, ...), `invalid_program`, or
    `too_large` for an answer beyond +-`max_abs` (a family's own bound: long sums need more
    than MAX_ABS)."""
    if result.status == "invalid":
        return None, "invalid_program"
    if result.status != "ok" or result.value is None:
        return None, f"sandbox_{result.status}"
    try:
        value = int(result.value)
    except ValueError:
        return None, "sandbox_error"
    if abs(value) > max_abs:
        return None, "too_large"
    return str(value), ""
