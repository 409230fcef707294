"""optuna-dashboard on a study's Optuna mirror (``cifartune dashboard``), during a study or
after it."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cifartune.errors import CifartuneError
from cifartune.store.study_data import read_study
from cifartune.views.status import is_live

log = logging.getLogger(__name__)


class DashboardError(CifartuneError, RuntimeError):
    """The dashboard cannot start (port in use, address not available)."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection does not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: " + format, *args)


def serve_dashboard(
    directory: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    storage_url: str | None = None,
    ready: Callable[[str], None] = lambda url: None,
) -> None:
    """Serve optuna-dashboard on the study's Optuna mirror until a KeyboardInterrupt (the CLI
    makes SIGTERM raise one too); `ready` gets the study's page URL once the port is bound.
    The mirror is brought up to date from the Parquet files first, unless a running study is
    writing it."""
    import optuna_dashboard

    from cifartune.store.optuna_mirror import export_optuna, open_storage

    study = read_study(directory)
    storage = open_storage(directory, storage_url)
    mirrored = study.name in {s.study_name for s in storage.get_all_studies()}
    if not mirrored or not is_live(study):
        export_optuna(directory, storage_url)
    study_id = storage.get_study_id_from_name(study.name)
    try:
        server = make_server(
            host, port, optuna_dashboard.wsgi(storage), _Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        hint = "pass another --port" if exc.errno == errno.EADDRINUSE else "check --host"
        raise DashboardError(f"--host {host} --port {port}: {exc.strerror}; {hint}") from None
    try:
        ready(f"http://{host}:{server.server_port}/dashboard/studies/{study_id}")
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("dashboard stopped")
    finally:
        server.server_close()
