"""Fixtures for the RabbitMQ adapter's broker tests: unique names, cleanup, a cuttable proxy."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import txmq
from txmq.adapters.base import Topology
from txmq.adapters.rabbitmq.adapter import RabbitMQAdapter
from txmq.adapters.rabbitmq.connection import open_blocking
from txmq.adapters.registry import parse_broker_url


@pytest.fixture
def connect_with(rabbitmq_url: str) -> Callable[..., RabbitMQAdapter]:
    """``connect_with(option=value, ...)``: an adapter for the test broker with URL options."""

    def connect(**options: object) -> RabbitMQAdapter:
        parts = urlsplit(rabbitmq_url)
        query = "&".join([parts.query, *(f"{k}={v}" for k, v in options.items())]).strip("&")
        broker = txmq.connect(urlunsplit(parts._replace(query=query)))
        assert isinstance(broker, RabbitMQAdapter)
        return broker

    return connect


@pytest.fixture
def raw_channel(rabbitmq_url: str) -> Iterator[Any]:
    """A plain pika channel for setting up and inspecting what the adapter does."""
    settings = parse_broker_url(rabbitmq_url)
    assert settings.system == "rabbitmq"
    connection = open_blocking(settings, name="test raw channel")
    yield connection.channel()
    if connection.is_open:
        connection.close()


@pytest.fixture
def cleanup(rabbitmq_url: str) -> Iterator[list[str]]:
    """Queue names to delete after the test (the shared broker stays tidy)."""
    queues: list[str] = []
    yield queues
    settings = parse_broker_url(rabbitmq_url)
    assert settings.system == "rabbitmq"
    connection = open_blocking(settings, name="test cleanup")
    channel = connection.channel()
    for queue in queues:
        channel.queue_delete(queue)
    connection.close()


@pytest.fixture
def adapter(rabbitmq_url: str) -> Iterator[RabbitMQAdapter]:
    broker = txmq.connect(rabbitmq_url)
    assert isinstance(broker, RabbitMQAdapter)
    yield broker
    broker.close()


@pytest.fixture
def declared(
    adapter: RabbitMQAdapter, unique: Callable[[str], str], cleanup: list[str]
) -> Callable[..., Topology]:
    """Declare a topology with unique group/topic names; its queues are deleted afterwards."""
    counter = iter(range(1000))

    def declare(
        retry_delays: tuple[float, ...] = (),
        *,
        group: str | None = None,
        topic: str | None = None,
        broker: RabbitMQAdapter | None = None,
    ) -> Topology:
        n = next(counter)
        topology = Topology(
            group or unique(f"g{n}"), topic or unique(f"t{n}"), retry_delays=retry_delays
        )
        cleanup.extend([topology.work_queue, topology.dead_letter_queue, *topology.retry_queues()])
        (broker or adapter).declare([topology])
        return topology

    return declare


@pytest.fixture
def depth(raw_channel: Any) -> Callable[[str], int]:
    """``depth(queue)``: messages ready in ``queue`` (not counting unacked ones)."""
    return lambda queue: int(raw_channel.queue_declare(queue, passive=True).method.message_count)


class TcpProxy:
    """Forwards TCP connections to the broker; can hold broker->client bytes, freeze the
    connections open so far, or cut sockets.

    Lets tests lose confirms (hold), strand the connections open so far behind a partition
    that new connections do not meet (freeze: nothing moves on them either way, and neither
    end sees them close) and kill connections (sever) the way a network would.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._gates: list[threading.Event] = []  # one per connection: cleared while frozen
        self._stopped = threading.Event()
        self.upstream_bytes = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_downstream(self) -> None:
        self._flowing.clear()

    def resume_downstream(self) -> None:
        self._flowing.set()

    def freeze(self) -> None:
        """Hold the bytes of every connection opened so far, both ways; later connections
        flow."""
        with self._lock:
            for gate in self._gates:
                gate.clear()

    def thaw(self) -> None:
        with self._lock:
            for gate in self._gates:
                gate.set()

    def sever(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stopped.set()
        self._flowing.set()
        self.thaw()
        self.sever()
        self._server.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            gate = threading.Event()
            gate.set()
            with self._lock:
                self._sockets += [client, upstream]
                self._gates.append(gate)
                self.connections += 1
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, up, gate), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, upstream: bool, gate: threading.Event
    ) -> None:
        try:
            while data := source.recv(65536):
                if upstream:
                    with self._lock:
                        self.upstream_bytes += len(data)
                else:
                    self._flowing.wait()
                gate.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(rabbitmq_url: str) -> Iterator[TcpProxy]:
    settings = parse_broker_url(rabbitmq_url)
    assert settings.system == "rabbitmq"
    tcp = TcpProxy(settings.host, settings.port)
    yield tcp
    tcp.close()


@pytest.fixture
def proxied_adapter(rabbitmq_url: str, proxy: TcpProxy) -> Iterator[RabbitMQAdapter]:
    """An adapter whose connections go through ``proxy``."""
    parts = urlsplit(rabbitmq_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    netloc_text = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    query = "&".join([parts.query, "connect_timeout=3"]).strip("&")
    broker = txmq.connect(urlunsplit(parts._replace(netloc=netloc_text, query=query)))
    assert isinstance(broker, RabbitMQAdapter)
    yield broker
    broker.close()
