"""What a user sees of a run: summary.json, plots, tables."""
