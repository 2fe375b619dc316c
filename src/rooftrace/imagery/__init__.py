"""imagery."""
