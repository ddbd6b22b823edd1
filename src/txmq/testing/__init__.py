"""Testing helpers: real brokers on demand and the pytest plugin.

- :mod:`txmq.testing.provision` starts RabbitMQ, Kafka and PostgreSQL as containers or as
  plain processes (``txmq brokers up``) and stops them again.
- :mod:`txmq.testing.pytest_plugin` (registered as the ``txmq`` pytest plugin) offers the
  session fixtures ``rabbitmq_url``, ``kafka_url``, ``database_url`` and ``broker_url``,
  and per test ``txmq_database``, ``txmq_engine``, ``txmq_sqlite_engine``,
  ``txmq_memory_url`` and ``txmq_unique``.
- The in-process broker for fast tests is the ``memory://`` adapter,
  :class:`~txmq.adapters.memory.adapter.InMemoryBroker` (``txmq.connect("memory://name")``).
"""
