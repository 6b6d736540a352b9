"""Report stage: events -> JSON lines or readable tables."""
