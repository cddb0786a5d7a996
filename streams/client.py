"""The client SDK under the import path the docs use: re-exports ``baton.streams.sdk``."""

from baton.streams.sdk import (
    MAX_POLICY_UPDATE_BYTES,
    ApproverClient,
    AsyncGovernanceClient,
    ClientOptions,
    ClientSettings,
    GovernanceClient,
    OperatorClient,
)

__all__ = [
    "MAX_POLICY_UPDATE_BYTES",
    "ApproverClient",
    "AsyncGovernanceClient",
    "ClientOptions",
    "ClientSettings",
    "GovernanceClient",
    "OperatorClient",
]
