"""The SQL layer of the outbox and the inbox: their tables (:mod:`txmq.sql.tables`), their
explicit creation and missing-table errors (:mod:`txmq.sql.schema`), and how databases
differ (:mod:`txmq.sql.dialect`)."""
