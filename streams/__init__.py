"""baton.streams."""
