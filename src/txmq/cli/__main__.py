"""``python -m txmq.cli``: the ``txmq`` command."""

from txmq.cli import main

main()
