"""The Post-Processor: filter, deduplicate and sanity-check judged traces."""
