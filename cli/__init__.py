"""The ``baton`` command line: a module per command or area, registered by ``main``."""
