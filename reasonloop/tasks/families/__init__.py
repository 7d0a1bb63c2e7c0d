"""Compact procedural families for the tiny testbed (addition, chained sums, multiplication,
linear equations, sorting). Look them up by name with `reasonloop.tasks.registry.get_family`."""
