"""txmq's tables as the ``txmq schema`` command imports them; they are defined in
:mod:`txmq.sql.tables` and created by :mod:`txmq.sql.schema`."""

from __future__ import annotations

from txmq.sql.schema import create_schema
from txmq.sql.tables import metadata

__all__ = ["create_schema", "metadata"]
