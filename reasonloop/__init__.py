"""reasonloop: a language model improves its own reasoning in a closed loop."""

__version__ = "0.1.0"
