"""The ``txmq`` command: a small root that mounts one sub-command group per concern."""

from __future__ import annotations

import typer

from txmq.testing.provision.cli import app as brokers_app

app = typer.Typer(help="txmq: transactional messages on RabbitMQ and Kafka.", no_args_is_help=True)
app.add_typer(brokers_app, name="brokers")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
