"""Why there is no plan, as inert Markdown for the PR comment.

``plan --format markdown`` prints this on stdout (and exits 1) when the configs are
invalid or the plan cannot be made, so the one PR comment shows the current push's
problems instead of keeping the last valid plan. Every value a user or a server wrote
(paths, messages) goes through :func:`coins_sync.plan.markdown.code`, the one inert
primitive, so a rule file's text cannot mention, link or break the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from coins_sync.errors import Problem
from coins_sync.plan.markdown import code
from coins_sync.plan.render import MARKDOWN_BUDGET, MARKDOWN_PATH_LIMIT
from coins_sync.words import plural

#: How much of one problem's message is shown.
MESSAGE_LIMIT = 300


def problems_markdown(problems: Sequence[Problem], env: str, budget: int = MARKDOWN_BUDGET) -> str:
    """The invalid configs' problems as a table; rows beyond ``budget`` are counted."""
    files = len({p.path for p in problems})
    lines = [
        f"### coins-sync plan for {code(env)}: the configs are invalid",
        "",
        f"**{plural(len(problems), 'problem')} in {plural(files, 'file')}; nothing is "
        "planned until they are fixed (`coins-sync validate` lists them too).**",
        "",
        "| file | line | col | problem |",
        "| --- | ---: | ---: | --- |",
    ]
    room = budget - sum(len(line) + 1 for line in lines) - 200
    shown = 0
    for problem in problems:
        row = (
            f"| {code(problem.path, MARKDOWN_PATH_LIMIT, cell=True)} | {problem.line} "
            f"| {problem.col} | {code(problem.message, MESSAGE_LIMIT, cell=True)} |"
        )
        room -= len(row) + 1
        if room < 0:
            break
        lines.append(row)
        shown += 1
    if shown < len(problems):
        lines += ["", f"… and {len(problems) - shown} more problems not shown."]
    return "\n".join(lines) + "\n"


def failure_markdown(message: str, env: str) -> str:
    """Any other reason the plan failed (a conflict, a refused plan, a bad setting)."""
    return (
        f"### coins-sync plan for {code(env)} failed\n\n"
        f"{code(message, 2000)}\n\n"
        "Nothing was applied; the job log has the details.\n"
    )
