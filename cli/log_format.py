"""How a long-running command writes its stderr lines: text, or one JSON object per line.

``--log-format json`` (``BATON_LOG_FORMAT=json``) on ``baton worker``, ``sink``, ``alerts``
and ``up`` makes every stderr line - log records, librdkafka's and Faust's included, and the
command's own status lines - one object: ``time`` (UTC, ISO 8601), ``level``, ``component``,
``logger``, ``message``, ``run_id`` when the record carries one (``extra={"run_id": ...}``)
and ``error`` with a traceback. Both formats pass every message through
``mask_credentials``: a DSN's password or a token in a URL never reaches a log line.

Not guaranteed: a secret that appears bare in free text (not in a URL) cannot be recognised;
code must not put one there (secrets live in ``SecretStr`` fields). Output a library writes
to stderr itself, past the ``logging`` module, stays as it is.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import click
import orjson

from baton.schemas.redact import mask_credentials
from baton.sinks.alert_text import clean_field

__all__ = ["LOG_OUTPUT_KEY", "JsonFormatter", "LogOutput", "MaskingFormatter", "logging_config"]

Format = Literal["text", "json"]

#: where a command's LogOutput waits in the click context (``Context.meta``) for its error line
LOG_OUTPUT_KEY = "baton.log_output"
#: the text format every command used so far (cli/main.py)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: a run id is at most 256 characters; a longer value is not one, and a log line stays short
_MAX_RUN_ID = 256
#: a message longer than this is cut (a hostile record's 60 KB text must not make 60 KB lines)
_MAX_MESSAGE = 8192


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class MaskingFormatter(logging.Formatter):
    """The text format, with URL passwords and tokens masked, one line per message."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # names in a message come from records others wrote (an operator's name in a kill
        # switch): a newline in one forged a whole log line, an escape sequence reached the
        # terminal of whoever read the log. Shown escaped (\x0a, \x1b, \u202e); a traceback,
        # added after the message, keeps its lines.
        text = super().formatMessage(record)
        return text if text.isprintable() else clean_field(text, _MAX_MESSAGE)

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, component, logger, message, run_id, error."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": _clip(mask_credentials(record.getMessage()), _MAX_MESSAGE),
        }
        run_id = getattr(record, "run_id", None)
        if run_id is not None:
            line["run_id"] = _clip(str(run_id), _MAX_RUN_ID)
        if record.exc_info:
            line["error"] = _clip(mask_credentials(self.formatException(record.exc_info)), 16384)
        # orjson escapes control characters: a message cannot break the one-line framing
        return orjson.dumps(line).decode()


def logging_config(fmt: Format, component: str, level: int | str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``fmt`` on stderr (what Faust's Worker takes)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "component": component}
        if fmt == "json"
        else {"()": MaskingFormatter, "fmt": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"baton": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "baton",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


class LogOutput:
    """A command's stderr: its log records and its own status lines, in one format."""

    def __init__(self, fmt: Format, component: str) -> None:
        self.fmt = fmt
        self.component = component
        self._formatter = JsonFormatter(component) if fmt == "json" else None

    def install(self) -> None:
        """Format every log record of this process (the root logger's handlers) this way,
        and the command's error line (cli/main.py finds this object in the click context)."""
        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            ctx.meta[LOG_OUTPUT_KEY] = self
        formatter = self._formatter or MaskingFormatter(TEXT_FORMAT)
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(logging.StreamHandler(sys.stderr))
        for handler in root.handlers:
            handler.setFormatter(formatter)

    def say(self, message: str, level: int = logging.INFO, run_id: str | None = None) -> None:
        """A status line of the command (always shown, whatever the log level), or nothing
        once stderr's reader is gone: `baton up 2>&1 | grep -m1 ready` closed the pipe and
        up's next line (a child's restart) ended the supervision it announced (H2, session 27)."""
        if self._formatter is None:
            line = mask_credentials(message)
        else:
            record = logging.LogRecord(self.component, level, "", 0, message, None, None)
            if run_id is not None:
                record.run_id = run_id
            line = self._formatter.format(record)
        with contextlib.suppress(BrokenPipeError, ValueError):  # reader gone, stderr closed
            print(line, file=sys.stderr, flush=True)
