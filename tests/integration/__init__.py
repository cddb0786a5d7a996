"""Integration tests: real Tansu broker, Faust workers, chDB."""
