"""Long-running txmq processes: ``txmq worker`` and ``txmq consume``.

The command line builds them from the library's parts (:class:`~txmq.Relay`,
:class:`~txmq.outbox.checkback.CheckBack`, :class:`~txmq.consumer.Consumer`); this package
adds what an operator needs around them: signal handling and exit codes
(:mod:`.service`), the ``/metrics``, ``/healthz`` and ``/readyz`` endpoints
(:mod:`.probes`) and the logging setup (:mod:`.logs`). Nothing here is imported by the
library itself: only the command line configures logging.
"""
