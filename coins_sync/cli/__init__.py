"""The ``coins-sync`` command line: commands only, each a thin shell over the core.

* :mod:`~coins_sync.cli.app`: the group, exit codes, error reporting, the entry point,
  and the registry of commands (each module is imported only when its command runs);
* :mod:`~coins_sync.cli.options`: shared options and :func:`with_workspace`;
* :mod:`~coins_sync.cli.validate`: ``validate`` (the lightest path: configs only);
* :mod:`~coins_sync.cli.plan`: ``plan`` and ``report`` (read-only);
* :mod:`~coins_sync.cli.apply`: ``apply``;
* :mod:`~coins_sync.cli.state`: ``state list|rm|import|push|pull|force-unlock|schema-sql``;
* :mod:`~coins_sync.cli.git_lease`: ``git-lease acquire|push|restore|release|status``;
* :mod:`~coins_sync.cli.sandbox`: ``sandbox``;
* :mod:`~coins_sync.cli.init`: ``init`` and ``schema`` (a new rules repository).

What they print goes through :mod:`coins_sync.console` (scrubbed) or the plan
renderers in :mod:`coins_sync.plan.render`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coins_sync.gcpause import built_for_good

if TYPE_CHECKING:
    from coins_sync.cli.app import (
        EXIT_CHANGES,
        EXIT_ERROR,
        EXIT_INTERRUPTED,
        EXIT_OK,
        EXIT_TERMINATED,
        cli,
    )

__all__ = [
    "EXIT_CHANGES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "cli",
    "main",
]


def main() -> None:
    """The ``coins-sync`` console script: run the command line's one command, then end.

    The command line (click, the group, then the command's own modules) is imported
    here, under :func:`~coins_sync.gcpause.built_for_good`: it lives as long as the
    process, so the cyclic collector never walks it (a tenth of a ``validate``).
    """
    with built_for_good():
        from coins_sync.cli import app
    app.run()


def __getattr__(name: str) -> Any:
    """The group and the exit codes, imported on first use (PEP 562), so that importing
    :func:`main` imports nothing of the command line yet."""
    if name in __all__:
        from coins_sync.cli import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
