"""baton.cli."""
