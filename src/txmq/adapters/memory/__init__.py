"""The in-process ``memory://`` broker, for fast tests without a broker: ``settings`` parses
its URLs, ``adapter`` is :class:`~txmq.adapters.memory.adapter.InMemoryBroker`."""
