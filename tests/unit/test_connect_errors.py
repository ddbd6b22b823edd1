"""txmq.connect() with a URL that cannot work: a quick typed error, never the secret.

(Moved from the adapter contract suite: these ask no adapter under test anything.)
"""

from __future__ import annotations

import time

import pytest

import txmq


@pytest.mark.parametrize(
    "url",
    [
        "rabbitmq://guest:hunter2@127.0.0.1:1/?connect_timeout=2",
        "kafka://127.0.0.1:1?connect_timeout=2&security.protocol=SASL_PLAINTEXT"
        "&sasl.mechanism=PLAIN&sasl.username=u&sasl.password=hunter2",
    ],
    ids=["rabbitmq", "kafka"],
)
def test_unreachable_broker_is_a_quick_typed_error_without_the_secret(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(txmq.BrokerUnavailable) as caught:
        txmq.connect(url)
    assert time.monotonic() - started < 2 + 2.0
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:hunter2@127.0.0.1/",
        "rabbitmq://u:hunter2@127.0.0.1:notaport/",
        "127.0.0.1:5672",
        "kafka://u:hunter2@127.0.0.1:9092",
        "kafka://",
        "rabbitmq://u:hunter2@127.0.0.1/?queue_type=nope",
    ],
)
def test_bad_url_is_a_typed_error_without_the_secret(url: str) -> None:
    with pytest.raises(txmq.InvalidURL) as caught:
        txmq.connect(url)
    assert "hunter2" not in str(caught.value)
