"""What the worker's Faust (aiokafka) connections authenticate with, from the one settings object.

The same CA, client certificate, key and SASL user as every confluent-kafka client
(``Settings.kafka_config()``), in Faust's credential types.
"""

from __future__ import annotations

from typing import Any

from baton.schemas.settings import Settings

__all__ = ["faust_credentials"]


def faust_credentials(s: Settings) -> Any:
    """Faust's credentials for ``s``'s security protocol (None for PLAINTEXT).

    SASLCredentials sets SASL_SSL exactly when it gets an ssl_context, so the context is
    passed only with SASL_SSL; the settings refuse a SASL protocol without a mechanism,
    so a SASL_* protocol never falls through to plain SSL here."""
    if s.security_protocol == "PLAINTEXT":
        return None
    from faust.auth import SASLCredentials, SSLCredentials

    from baton.schemas.connections import client_ssl_context

    ctx = None
    if "SSL" in s.security_protocol:
        key_password = s.ssl_key_password.get_secret_value() if s.ssl_key_password else None
        ctx = client_ssl_context(s.ssl_cafile, s.ssl_certfile, s.ssl_keyfile, key_password)
    if s.security_protocol.startswith("SASL_"):
        return SASLCredentials(
            username=s.sasl_username,
            password=s.sasl_password.get_secret_value() if s.sasl_password else None,
            mechanism=s.sasl_mechanism,
            ssl_context=ctx,
        )
    return SSLCredentials(ctx)
