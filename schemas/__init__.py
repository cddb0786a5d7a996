"""baton.schemas."""
