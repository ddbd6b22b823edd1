"""The ``txmq`` command line, under the ``cli`` extra (``pip install 'txmq[cli]'``).

Nothing in the library imports this package: it holds every typer module, and the root
command (:mod:`txmq.cli.root`) mounts one sub-command group per concern. ``txmq brokers``
is mounted lazily, so that no other command loads the test provisioning.
"""

from __future__ import annotations

import sys

#: The exit status of ``txmq`` when the command line's own dependency is missing.
EXIT_MISSING_CLI = 2


def main() -> None:
    """The ``txmq`` entry point: run the root command.

    Without typer it prints one line naming the ``cli`` extra and exits with status 2.
    """
    try:
        from txmq.cli.root import app
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "typer":
            raise
        print("txmq: the command line needs typer: pip install 'txmq[cli]'", file=sys.stderr)
        raise SystemExit(EXIT_MISSING_CLI) from None
    app()
