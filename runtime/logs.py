"""structlog set-up: console lines for people (local profiles), JSON lines for machines (production).

Configured once per process by the CLI; library code only calls ``structlog.get_logger``. Secrets
never reach a log line: DSNs are logged through :func:`ctxplane.config.settings.redact_dsn` only.
"""

from __future__ import annotations

import logging
import sys

import structlog

from ctxplane.config.settings import LoggingSettings

__all__ = ("configure_logging",)


class _Stderr:
    """Whatever ``sys.stderr`` is at each write: a live progress display on a terminal replaces it
    with a proxy that prints log lines above the display (actors/operate/reporting.py)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(settings: LoggingSettings, *, stream: object = None) -> None:
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if settings.format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
