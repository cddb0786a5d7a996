"""baton.processors."""
