"""The Reasoner: prompting formats, step parsing, sampling and search."""
