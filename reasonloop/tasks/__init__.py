"""Task sources: compact procedural families, reasoning-gym, files."""
