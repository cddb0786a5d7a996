"""baton.sinks."""
