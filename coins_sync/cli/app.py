"""The ``coins-sync`` group: exit codes, error reporting, verbosity and the entry point.

Only the command line turns errors into messages and exit codes: 0 success, 1 any
error (usage errors included), 2 "changes present" under ``--detailed-exitcode``,
130 after Ctrl-C and 143 after SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import sys
from collections.abc import Sequence
from typing import Any

import click

from coins_sync import __version__, console
from coins_sync.errors import CoinsSyncError, ConfigError
from coins_sync.gcpause import built_for_good

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it

_VERBOSE = re.compile(r"-v+|--verbose|--no-colou?r")

#: Every command, by name: the module that defines it and the command's attribute there.
#: A command's module is imported only when that command runs (or `--help` lists them
#: all), so `validate` never pays for apply's imports. Adding a command is one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("coins_sync.cli.validate", "validate"),
    "plan": ("coins_sync.cli.plan", "plan_command"),
    "report": ("coins_sync.cli.plan", "report"),
    "apply": ("coins_sync.cli.apply", "apply_command"),
    "state": ("coins_sync.cli.state", "state"),
    "git-lease": ("coins_sync.cli.git_lease", "git_lease"),
    "sandbox": ("coins_sync.cli.sandbox", "sandbox"),
    "init": ("coins_sync.cli.init", "init"),
    "schema": ("coins_sync.cli.init", "schema_command"),
}

#: The commands that never log a line without -v, nor import a module that logs:
#: logging is not even imported for them (see console.setup_logging). Any other
#: command gets logging set up before it runs, whatever it imports later.
SILENT_COMMANDS = frozenset({"validate", "init", "schema"})


def _report_error(error: CoinsSyncError) -> None:
    if isinstance(error, ConfigError):
        for problem in error.problems:
            console.err(str(problem))
    console.err(f"Error: {error}")


def _verbosity_first(args: list[str]) -> list[str]:
    """Accept -v/-vv/--verbose and --no-color after the command too (`coins-sync plan
    -vv`), as people type them; they are moved before it. Nothing after `--` is touched."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if _VERBOSE.fullmatch(a)]
    rest = [a for a in args[:end] if not _VERBOSE.fullmatch(a)]
    return flags + rest + args[end:]


class CoinsGroup(click.Group):
    """A group whose every error exits 1 (click uses 2 for usage errors), and whose
    commands are loaded lazily from :data:`COMMANDS` (click's lazy group pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = COMMANDS[cmd_name]
        with modules_for_good():
            command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):  # a wrong registry entry: a bug here
            raise TypeError(f"{module_name}.{attribute} is not a click command")
        self.add_command(command, cmd_name)
        return command

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = _verbosity_first(list(sys.argv[1:] if args is None else args))
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except CoinsSyncError as e:
            _report_error(e)
            code = EXIT_ERROR
        except click.ClickException as e:
            shown = io.StringIO()
            e.show(file=shown)
            console.err(shown.getvalue(), nl=False)
            code = EXIT_ERROR
        except OSError as e:  # the machine said no: permissions, full disk, bad path
            where = f": {e.filename}" if e.filename else ""
            console.err(f"Error: {e.strerror or e}{where}")
            code = EXIT_ERROR
        except click.exceptions.Abort as e:
            # click turns Ctrl-C at a prompt into Abort; it still exits as Ctrl-C does
            if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
                console.err("Interrupted.")
                code = EXIT_INTERRUPTED
            else:
                console.err("Aborted.")
                code = EXIT_ERROR
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(cls=CoinsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="coins-sync")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option(
    "--no-color",
    "--no-colour",
    "no_colour",
    is_flag=True,
    help="No colour in the output (also with NO_COLOR set or TERM=dumb).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, no_colour: bool) -> None:
    """Keep EnKash coin reward rules as code: validate, plan and apply.

    \b
    Example:
      coins-sync validate && coins-sync plan && coins-sync apply
    """
    console.setup_logging(verbose, silent_command=ctx.invoked_subcommand in SILENT_COMMANDS)
    console.forbid_colour(no_colour)


#: Set by :func:`run`: this process runs one command and ends, so the command's modules
#: live as long as it (see :func:`~coins_sync.gcpause.built_for_good`).
_ONE_COMMAND = False


def modules_for_good() -> contextlib.AbstractContextManager[None]:
    """Where a command imports what it runs on (the apply path, the database driver):
    in the console script, under :func:`~coins_sync.gcpause.built_for_good`; for a
    library caller (:data:`cli` invoked directly, tests), as it is."""
    return built_for_good() if _ONE_COMMAND else contextlib.nullcontext()


def run() -> None:
    """Run the command of ``sys.argv`` and exit: the console script's body (through
    :func:`coins_sync.cli.main`). A library caller invokes :data:`cli` instead."""
    global _ONE_COMMAND
    _ONE_COMMAND = True
    cli.main(prog_name="coins-sync")
