"""Keep the terminal for the progress line and the summary: send a piece of work's output and warnings to a log.

:func:`output_to` redirects everything a block prints or logs (a bundle evaluation, the report) to a log file;
:func:`expected_warnings` records the warnings a block is known to raise (e.g. a metric undefined on a small test
split) so that the caller can note them instead of letting them reach the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path


@contextlib.contextmanager
def output_to(log: Path):
    """Send this process's stdout, stderr, warnings and logging to ``log`` (appended) for the duration, and undo
    what a bundle's ``logging.conf`` (``logging.config.fileConfig``) does to the process's logging. Loggers that
    already write to the terminal (MONAI's own, set up at import) are pointed at ``log`` meanwhile; handlers added
    meanwhile that write to ``log`` (e.g. an Ignite engine's, made on the redirected stderr) are removed after, so
    that a later evaluation does not write to the closed file. An exception raised in the block is not caught: it
    reaches the caller (and the terminal) as usual."""
    root, loggers = logging.getLogger(), [lg for lg in logging.Logger.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger)]  # fmt: skip
    saved = root.handlers[:], root.level, {lg: lg.disabled for lg in loggers}
    terminal = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    streams = {h: h.stream for lg in [root, *loggers] for h in lg.handlers
               if isinstance(h, logging.StreamHandler) and h.stream in terminal}  # fmt: skip
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        for handler in streams:
            handler.setStream(f)
        try:
            yield f
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            for lg, disabled in saved[2].items():
                lg.disabled = disabled
            for handler, stream in streams.items():
                handler.setStream(stream)
            for lg in [root, *logging.Logger.manager.loggerDict.values()]:
                for handler in getattr(lg, "handlers", [])[:]:
                    if getattr(handler, "stream", None) is f:
                        lg.removeHandler(handler)


@contextlib.contextmanager
def expected_warnings(pattern: str, notes: list[str] | None = None):
    """Record the warnings whose message matches the regular expression ``pattern`` raised in the block, adding
    their distinct messages to ``notes``; other warnings are re-issued unchanged after the block."""
    import re

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = str(w.message)
        if re.search(pattern, text):
            if notes is not None and text not in notes:
                notes.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
