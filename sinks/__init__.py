"""The ClickHouse audit trail of every decision: from Kafka into ClickHouse, and back out to people.

Modules: ``clickhouse`` (DSN -> client), ``schema`` (migrations), ``rows`` (Decision -> row),
``audit_batch`` (a batch written, refused rows isolated),
``sink`` (``run_sink``), ``sqlserver`` (``serve_sql``), ``query`` and ``render`` (``baton
sql``), ``trace`` (``baton trace``), ``alerts`` (``run_alerts``), ``rules`` (``baton alerts
check``).
"""
