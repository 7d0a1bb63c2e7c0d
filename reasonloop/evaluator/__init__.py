"""The Evaluator: scores traces against gold answers (verifiers), by consensus, or with learned
judges, at outcome, step or token level."""
