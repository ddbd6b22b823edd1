"""Testing helpers: real brokers on demand, the pytest plugin, the contract suites.

- :func:`wait_for` waits for a condition in a test (``wait_for(lambda: ..., 30, "what")``),
  failing it with what was awaited instead of sleeping for a guessed time.
- :mod:`txmq.testing.provision` starts RabbitMQ, Kafka, PostgreSQL and MariaDB as
  containers or as plain processes (``txmq brokers up``) and stops them again.
- :mod:`txmq.testing.pytest_plugin` (registered as the ``txmq`` pytest plugin) offers the
  session fixtures ``rabbitmq_url``, ``kafka_url``, ``database_url`` (PostgreSQL),
  ``mysql_url`` (MariaDB/MySQL) and ``broker_url``, and per test ``txmq_database``,
  ``txmq_engine``, ``txmq_mysql_database``, ``txmq_mysql_engine``, ``txmq_sqlite_engine``,
  ``txmq_memory_url`` and ``txmq_unique``.
- :mod:`txmq.testing.contract` holds the contract suites every adapter passes (memory,
  RabbitMQ, Kafka, and yours: see there how to run them).
- The in-process broker for fast tests is the ``memory://`` adapter,
  :class:`~txmq.adapters.memory.adapter.InMemoryBroker` (``txmq.connect("memory://name")``).
"""

from txmq.testing.waiting import wait_for

__all__ = ["wait_for"]
