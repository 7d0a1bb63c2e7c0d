"""The round loop: rounds, strategies, records on disk, checkpoint and resume."""
