"""``python -m kmtr_monai.bundle_run run ...``: exactly ``python -m monai.bundle run ...``, plus a root cause for the
parent process.

When the environment names ``KMTR_ERROR_FILE``, an exception is reduced to its root cause in one line
(:func:`kmtr_monai.cli.root_cause`, :func:`kmtr_monai.cli.one_line`: ``Type: message``, MONAI's ``applying
transform`` and config-instantiation wrappers removed) and written there before the process exits with status 1, so
``kmtr infer`` can report what went wrong instead of the command it ran. The traceback goes to stderr only when
``KMTR_DEBUG`` is set (not ``0``), or when no error file is asked for; in the same way, log records lose their
traceback (MONAI's ``StatsHandler`` logs every engine exception with one) and keep their one-line message.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    """Run ``monai.bundle``'s command line (``sys.argv[1:]``) with the root-cause report described above."""
    error_file = os.environ.get("KMTR_ERROR_FILE", "")
    debug = os.environ.get("KMTR_DEBUG", "") not in ("", "0")
    if error_file and not debug:
        _log_without_tracebacks()
    try:
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    except Exception as err:  # noqa: BLE001 - reported to the parent, then the process fails
        if not error_file:
            raise
        from kmtr_monai.cli import one_line, root_cause

        with open(error_file, "w") as fh:
            fh.write(one_line(root_cause(err)) + "\n")
        if debug:
            raise
        sys.exit(1)


def _log_without_tracebacks() -> None:
    """Every log record of this process is made without its exception traceback (survives ``logging.conf``)."""
    import logging

    make = logging.getLogRecordFactory()

    def factory(name, level, fn, lno, msg, args, exc_info, func=None, sinfo=None, **kwargs):
        return make(name, level, fn, lno, msg, args, None, func, sinfo, **kwargs)

    logging.setLogRecordFactory(factory)


if __name__ == "__main__":
    main()
