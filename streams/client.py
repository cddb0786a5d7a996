"""The client SDK under the import path the docs use: re-exports ``baton.streams.sdk``."""

from baton.streams import sdk as _sdk
from baton.streams.sdk import *  # noqa: F403  (every public name, nothing else)

__all__ = _sdk.__all__
