"""Monte-Carlo tree search over reasoning steps with PUCT (AlphaZero, Silver et al. 2017; as used
for LLM reasoning by rStar, Qi et al. 2024, and ReST-MCTS*, Zhang et al. 2024).

A node is a step prefix of the completion; its children are sampled next steps. One simulation
selects a leaf by PUCT from the root,

    argmax_child  Q(child) + c_puct * P(child) * sqrt(N(parent)) / (1 + N(child)),

expands it with `expansions` sampled next steps (identical ones merged), evaluates each new child
and backs its value up to the root (visits + 1, value sum + v on every node of the path, so Q is
the mean value below a node). A leaf that is a finished solution is not expanded: selecting it
backs its own value up again, which is how visits pile up on the best complete path. The
answer is the most visited path from the root; when that path does not end in a finished
solution, the finished node of highest mean value.

Our choices: the prior P is uniform over distinct children or their sampling probability
renormalised over the children (`prior: probability`, merged duplicates add up); an unvisited
child's Q is its parent's (first-play urgency), so the prior alone orders unvisited children;
the value of a node is a step scorer's aggregate of its prefix (a PRM value) or the outcome
score of one rollout sampled from it to the end (`rollout_value`). All tasks search in lockstep,
one leaf per task per simulation, so each simulation is one batched generate call.

`Tree` is the pure bookkeeping (select / expand / backup / answer), testable by hand; `mcts`
drives it with plain functions (a proposer and an evaluator), so a toy environment drives it
in tests exactly as a model does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reasonloop.evaluator.process_reward_model import aggregate
from reasonloop.models.base import Completion
from reasonloop.reasoner.search import Scorer
from reasonloop.reasoner.step_search import (
    Propose,
    StepScorer,
    is_finished,
    split_steps,
)

Evaluate = Callable[[list[str], list[str]], tuple[list[float], list[int]]]
"""(prompts, node completions) -> (a value per node, tokens generated to get it)."""
PRIORS = ("uniform", "probability")


@dataclass
class Node:
    text: str
    """The completion so far (steps each ending in ";", or a finished solution)."""
    parent: int
    """Index of the parent node; -1 for the root."""
    prior: float = 1.0
    terminal: bool = False
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    value: float = 0.0
    """The node's own evaluation (what selecting a terminal node backs up again)."""

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


class Tree:
    """One task's search tree; node 0 is the root (the empty completion)."""

    def __init__(self, c_puct: float = 1.0, max_depth: int = 16) -> None:
        if not c_puct >= 0:
            raise ValueError(f"mcts c_puct must be >= 0, got {c_puct!r}")
        self.c_puct, self.max_depth = c_puct, max_depth
        self.nodes = [Node("", -1)]
        self.depth = [0]

    def puct(self, child: int) -> float:
        """The PUCT score of `child` as seen from its parent."""
        c = self.nodes[child]
        p = self.nodes[c.parent]
        q = c.q if c.visits else p.q  # first-play urgency: an unvisited child is worth its parent
        return q + self.c_puct * c.prior * math.sqrt(p.visits) / (1 + c.visits)

    def select(self) -> int:
        """The leaf reached from the root by always taking the highest-PUCT child (ties: the
        first child). A leaf is a node without children: unexpanded, or terminal."""
        node = 0
        while self.nodes[node].children:
            kids = self.nodes[node].children
            node = max(kids, key=self.puct)  # max keeps the first of equal scores
        return node

    def is_leaf_terminal(self, node: int) -> bool:
        """Nothing to expand: a finished solution, or the depth limit reached."""
        return self.nodes[node].terminal or self.depth[node] >= self.max_depth

    def expand(self, leaf: int, children: Sequence[tuple[str, float, bool]]) -> list[int]:
        """Add children (completion text, prior, terminal) to `leaf`; returns their indices."""
        if self.nodes[leaf].children:
            raise ValueError(f"node {leaf} is already expanded")
        out = []
        for text, prior, terminal in children:
            self.nodes.append(Node(text, leaf, prior, terminal))
            self.depth.append(self.depth[leaf] + 1)
            out.append(len(self.nodes) - 1)
        self.nodes[leaf].children = out
        return out

    def backup(self, node: int, value: float) -> None:
        """Add one visit of `value` to `node` and every ancestor up to the root."""
        while node >= 0:
            n = self.nodes[node]
            n.visits += 1
            n.value_sum += value
            node = n.parent

    def evaluated(self, node: int, value: float) -> None:
        """Record a new node's own value and back it up."""
        self.nodes[node].value = value
        self.backup(node, value)

    def answer(self) -> int | None:
        """The end of the most visited path (over visited nodes; ties: higher Q, then the first
        child) when it is a finished solution; else the finished node of highest mean value (ties: more visits,
        then the earliest); None when no node is finished."""
        node = 0
        while kids := [k for k in self.nodes[node].children if self.nodes[k].visits]:
            node = max(kids, key=lambda k: (self.nodes[k].visits, self.nodes[k].q))
        if self.nodes[node].terminal and self.nodes[node].visits:
            return node
        done = [i for i, n in enumerate(self.nodes) if n.terminal and n.visits]
        if not done:
            return None
        return max(done, key=lambda i: (self.nodes[i].q, self.nodes[i].visits))


def merge_children(
    prefix: str, comps: Sequence[Completion], prior: str
) -> list[tuple[str, float, bool]]:
    """Distinct next steps of `prefix` as (text, prior, terminal), in order of first sampling.
    `uniform`: 1/k each; `probability`: exp(logprob) of each distinct step renormalised over
    them (a duplicate's probability is counted once: it is the same step)."""
    if prior not in PRIORS:
        raise ValueError(f"mcts prior must be one of {PRIORS}, got {prior!r}")
    first: dict[str, float] = {}
    for c in comps:
        first.setdefault(prefix + c.text, c.logprob)
    if not first:
        return []
    if prior == "uniform":
        weights = [1.0] * len(first)
    else:
        top = max(first.values())
        weights = [math.exp(lp - top) for lp in first.values()]  # shifted: no underflow to 0
    total = sum(weights)
    return [(t, w / total, is_finished(t)) for t, w in zip(first, weights, strict=True)]


def step_value(step_scorer: StepScorer, how: str = "last") -> Evaluate:
    """A node's value is its aggregated step score (a PRM's value of the prefix); no tokens."""
    aggregate([], how)

    def evaluate(prompts: list[str], texts: list[str]) -> tuple[list[float], list[int]]:
        scores = step_scorer(prompts, texts) if texts else []
        return [aggregate(s, how) for s in scores], [0] * len(texts)

    return evaluate


def rollout_value(complete: Propose, scorer: Scorer) -> Evaluate:
    """A node's value is the outcome score of one completion sampled from it to the end (a
    finished node is scored as it is); the rollout's tokens count toward the budget."""

    def evaluate(prompts: list[str], texts: list[str]) -> tuple[list[float], list[int]]:
        open_ = [i for i, t in enumerate(texts) if not is_finished(t)]
        full, tokens = list(texts), [0] * len(texts)
        for i, comps in zip(
            open_, complete([prompts[i] + texts[i] for i in open_], 1), strict=True
        ):
            full[i] = texts[i] + comps[0].text
            tokens[i] = comps[0].n_tokens
        values = [float(v) for v in scorer(prompts, full)] if texts else []
        return values, tokens

    return evaluate


@dataclass
class MCTSResult:
    """One task's search: the chosen solution and what it cost."""

    text: str | None
    answer: str | None
    value: float
    """Mean value of the chosen node (0.0 when nothing finished)."""
    tokens: int = 0
    samples: int = 0
    """Step samples drawn (expansions x simulations that expanded)."""
    simulations: int = 0
    tree: Tree | None = None


def mcts(
    prompts: Sequence[str],
    propose: Propose,
    evaluate: Evaluate,
    simulations: int = 32,
    expansions: int = 4,
    c_puct: float = 1.0,
    prior: str = "uniform",
    max_steps: int = 16,
    token_budget: Sequence[int] | int | None = None,
) -> list[MCTSResult]:
    """MCTS for every prompt at once; a task stops after `simulations` simulations or once it
    has generated `token_budget` tokens (per task; None: no limit)."""
    for name, value in (
        ("simulations", simulations),
        ("expansions", expansions),
        ("max_steps", max_steps),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"mcts {name} must be an int >= 1, got {value!r}")
    if prior not in PRIORS:
        raise ValueError(f"mcts prior must be one of {PRIORS}, got {prior!r}")
    n = len(prompts)
    budgets = (
        [token_budget] * n
        if token_budget is None or isinstance(token_budget, int)
        else list(token_budget)
    )
    if len(budgets) != n:
        raise ValueError(f"{len(budgets)} token budgets for {n} prompts")
    trees = [Tree(c_puct, max_steps) for _ in prompts]
    res = [MCTSResult(None, None, 0.0, tree=t) for t in trees]
    for _ in range(simulations):
        go = [i for i in range(n) if budgets[i] is None or res[i].tokens < budgets[i]]
        if not go:
            break
        expand: list[tuple[int, int]] = []
        for i in go:
            res[i].simulations += 1
            leaf = trees[i].select()
            if trees[i].is_leaf_terminal(leaf):
                trees[i].backup(leaf, trees[i].nodes[leaf].value)
            else:
                expand.append((i, leaf))
        if not expand:
            continue
        outs = propose([prompts[i] + trees[i].nodes[leaf].text for i, leaf in expand], expansions)
        if len(outs) != len(expand):
            raise ValueError(f"proposer returned {len(outs)} lists for {len(expand)} contexts")
        new: list[tuple[int, int]] = []
        for (i, leaf), comps in zip(expand, outs, strict=True):
            res[i].samples += len(comps)
            res[i].tokens += sum(c.n_tokens for c in comps)
            kids = merge_children(trees[i].nodes[leaf].text, comps, prior)
            new += [(i, k) for k in trees[i].expand(leaf, kids)]
        values, spent = evaluate(
            [prompts[i] for i, _ in new], [trees[i].nodes[k].text for i, k in new]
        )
        if len(values) != len(new):
            raise ValueError(f"evaluator returned {len(values)} values for {len(new)} nodes")
        for (i, k), v, t in zip(new, values, spent, strict=True):
            if math.isnan(v):
                raise ValueError("a node's value is NaN")
            trees[i].evaluated(k, float(v))
            res[i].tokens += t
    for r, tree in zip(res, trees, strict=True):
        node = tree.answer()
        if node is not None:
            r.text = tree.nodes[node].text
            r.answer = split_steps(r.text)[1]
            r.value = tree.nodes[node].q
    return res
