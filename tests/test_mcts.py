"""MCTS over steps: PUCT selection, backup and the answer rule by hand on built trees; the
search finding the known best path of a toy step tree; priors and rollout values; and a real
tiny model searched with the family's own step check."""

from __future__ import annotations

import math

import pytest
from toy_step_tree import BEST, PROMPT, propose, step_scorer

from reasonloop.models.base import Completion
from reasonloop.reasoner.mcts import Tree, mcts, merge_children, rollout_value, step_value


def _tree(c_puct: float = 1.0) -> Tree:
    """root -> A (prior 0.7), B (prior 0.3); A -> A1 (terminal)."""
    t = Tree(c_puct)
    a, b = t.expand(0, [("a;", 0.7, False), ("b;", 0.3, False)])
    t.expand(a, [("a;x#1", 1.0, True)])
    return t


def test_puct_by_hand() -> None:
    t = _tree(c_puct=2.0)
    root, a, b = t.nodes[0], t.nodes[1], t.nodes[2]
    root.visits, root.value_sum = 4, 2.0  # Q(root) = 0.5
    a.visits, a.value_sum = 3, 0.6  # Q(A) = 0.2
    # A: 0.2 + 2 * 0.7 * sqrt(4) / (1 + 3) = 0.2 + 0.7 = 0.9
    assert t.puct(1) == pytest.approx(0.9)
    # B is unvisited: its Q is its parent's (0.5); 0.5 + 2 * 0.3 * 2 / 1 = 1.7
    assert t.puct(2) == pytest.approx(1.7)
    assert t.select() == 2  # B, an unexpanded leaf
    b.visits, b.value_sum = 4, 0.0  # B: 0 + 2 * 0.3 * 2 / 5 = 0.24 < A's 0.9
    assert t.puct(2) == pytest.approx(0.24)
    assert t.select() == 3  # down A to its terminal child
    t.nodes[0].visits = 0  # no parent visits: the exploration term vanishes, Q decides
    assert t.puct(1) == pytest.approx(0.2)


def test_select_ties_go_to_the_first_child() -> None:
    t = Tree()
    t.expand(0, [("p;", 0.5, False), ("q;", 0.5, False)])
    assert t.select() == 1


def test_backup_adds_a_visit_and_the_value_along_the_path() -> None:
    t = _tree()
    t.backup(3, 1.0)  # A1 -> A -> root
    t.backup(2, 0.0)  # B -> root
    assert [n.visits for n in t.nodes] == [2, 1, 1, 1]
    assert [n.value_sum for n in t.nodes] == [1.0, 1.0, 0.0, 1.0]
    assert t.nodes[0].q == 0.5 and t.nodes[1].q == 1.0
    t.evaluated(2, 0.25)  # a node's own value is kept for re-visits
    assert t.nodes[2].value == 0.25 and t.nodes[2].visits == 2 and t.nodes[0].visits == 3


def test_answer_is_the_most_visited_finished_path_else_the_best_finished_node() -> None:
    t = _tree()
    assert t.answer() is None  # nothing visited, nothing finished
    t.backup(3, 0.2)
    assert t.answer() == 3
    # B more visited than A, but B's path does not end in a finished solution: the finished
    # node with the best mean value is taken instead
    for _ in range(3):
        t.backup(2, 0.9)
    assert t.nodes[2].visits > t.nodes[1].visits
    assert t.answer() == 3
    b1 = t.expand(2, [("b;y#2", 1.0, True)])[0]
    t.backup(b1, 0.8)
    assert t.answer() == b1  # now the most visited path (root, B, B1) is finished


def test_expand_refuses_an_expanded_node() -> None:
    t = _tree()
    with pytest.raises(ValueError, match="already expanded"):
        t.expand(1, [("a;z#0", 1.0, True)])
    with pytest.raises(ValueError, match="c_puct"):
        Tree(c_puct=-1.0)


def test_merge_children_merges_duplicates_and_normalises_priors() -> None:
    comps = [
        Completion("1;", 2, math.log(0.5)),
        Completion("2#7", 3, math.log(0.2)),
        Completion("1;", 2, math.log(0.5)),
    ]
    uniform = merge_children("0;", comps, "uniform")
    assert uniform == [("0;1;", 0.5, False), ("0;2#7", 0.5, True)]
    prob = merge_children("0;", comps, "probability")
    assert [t for t, _, _ in prob] == ["0;1;", "0;2#7"]
    assert prob[0][1] == pytest.approx(0.5 / 0.7) and prob[1][1] == pytest.approx(0.2 / 0.7)
    with pytest.raises(ValueError, match="prior"):
        merge_children("", comps, "softmax")


def test_mcts_finds_the_known_best_path_of_a_toy_tree() -> None:
    """The toy's best first step is a trap (see toy_step_tree): MCTS must back up values from
    deeper down and settle on b;z#3."""
    [r] = mcts([PROMPT], propose, step_value(step_scorer, "min"), simulations=100, expansions=3)
    assert r.text == BEST and r.answer == "3"
    assert r.value == pytest.approx(0.5)
    tree = r.tree
    assert tree is not None and tree.nodes[0].visits >= 100
    # every expansion drew 3 step samples; the 4 non-terminal nodes were expanded once each
    assert r.samples == 4 * 3
    assert r.tokens == 7 + (2 + 3 + 2) + (3 + 3 + 3) + 3 * 3  # "", "a;", "b;", "a;x;"
    # a token budget stops the search early: after the first expansion (7 tokens) it is spent
    [short] = mcts([PROMPT], propose, step_value(step_scorer, "min"), 100, 3, token_budget=5)
    assert short.simulations == 1 and short.tokens == 7
    assert short.text == "c#1"  # the only finished node it saw


def test_rollout_value_scores_a_completion_to_the_end() -> None:
    def complete(contexts: list[str], m: int) -> list[list[Completion]]:
        return [[Completion("r#9", 3)] for _ in contexts]

    seen: list[str] = []

    def outcome(prompts: list[str], completions: list[str]) -> list[float]:
        seen.extend(completions)
        return [1.0 if c.endswith("#9") else 0.0 for c in completions]

    values, tokens = rollout_value(complete, outcome)(["?", "?"], ["a;", "b#1"])
    assert seen == ["a;r#9", "b#1"]  # an open node is rolled out; a finished one scored as is
    assert values == [1.0, 0.0] and tokens == [3, 0]


def test_mcts_rejects_bad_arguments() -> None:
    value = step_value(step_scorer, "min")
    with pytest.raises(ValueError, match="simulations"):
        mcts([PROMPT], propose, value, simulations=0)
    with pytest.raises(ValueError, match="expansions"):
        mcts([PROMPT], propose, value, expansions=0)
    with pytest.raises(ValueError, match="prior"):
        mcts([PROMPT], propose, value, prior="flat")
    with pytest.raises(ValueError, match="aggregation"):
        step_value(step_scorer, "max")
