"""``python -m baton.cli``: the ``baton`` command without its console script."""

from baton.cli.main import main

main()
