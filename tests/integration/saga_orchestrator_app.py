"""An orchestrator process of the saga SIGKILL test:
``python saga_orchestrator_app.py '{"broker_url": ..., "database_url": ..., "suffix": ...}'``.

Runs the order saga's orchestrator of the shop named by ``suffix`` (timeout loop, reply
consumer, relay) and prints ``ready`` once started; it runs until killed.
"""

from __future__ import annotations

import json
import sys
import threading

from saga_shop import Shop
from sqlalchemy import create_engine

import txmq


def main() -> None:
    config = json.loads(sys.argv[1])
    engine = create_engine(config["database_url"])
    broker = txmq.connect(config["broker_url"])
    shop = Shop(engine=engine, broker=broker, suffix=config["suffix"])
    shop.orchestrator(shop.definition())
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
