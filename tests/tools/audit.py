"""`make audit`: run pip-audit and refuse to call a run that audited nothing "clean".

pip-audit prints "No known vulnerabilities found" even when it could look up none of
the dependencies (a machine that reaches only the package index, not PyPI's JSON API
or OSV). This wrapper counts what was really audited and exits non-zero unless every
dependency was checked and none is vulnerable.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    run = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--skip-editable", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        report = json.loads(run.stdout)
    except ValueError:
        sys.stderr.write(run.stderr)
        print("make audit: pip-audit produced no report; nothing was audited", file=sys.stderr)
        return 1
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    vulnerable = [d for d in deps if d.get("vulns")]
    audited = len(deps) - len(skipped)
    for dep in vulnerable:
        ids = ", ".join(v["id"] for v in dep["vulns"])
        print(f"VULNERABLE {dep['name']} {dep.get('version', '?')}: {ids}")
    print(f"audited {audited} of {len(deps)} dependencies; {len(vulnerable)} vulnerable")
    if skipped:
        print(
            f"make audit: {len(skipped)} dependencies could not be audited "
            f"(e.g. {skipped[0]['name']}: {skipped[0]['skip_reason']}). pip-audit needs "
            "PyPI's JSON API or OSV; run it where they are reachable.",
            file=sys.stderr,
        )
        return 1
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
