#!/usr/bin/env python3
"""Set-up and everyday commands, needing nothing but Python 3.11+.

    python3 dev.py serve [args]   run the service (embedded PostgreSQL without DATABASE_URL)
    python3 dev.py test [args]    run the whole test suite (pytest arguments pass through)
    python3 dev.py lint           ruff, mypy and hadolint
    python3 dev.py python [args]  the project's interpreter
    python3 dev.py tools PROGRAM [args]   a program of the tools extra (locust, schemathesis), or
                                  `python` with it installed (benchmarks, plots)

Each command first makes `.venv` (or $VENV) and installs the pinned dependencies
(pyproject.toml, versions locked by constraints.txt) when they changed since the last run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".storefront-installed"


def _fingerprint(extras: str) -> str:
    digest = hashlib.sha256(extras.encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv(extras: str = "dev") -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older python3
        sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]})")
    if not PYTHON.exists():
        print(f"creating {VENV} ...", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    wanted = _fingerprint(extras)
    if STAMP.exists() and STAMP.read_text() in (wanted, _fingerprint("dev,tools")):
        return  # what is installed covers what is asked
    print("installing dependencies ...", file=sys.stderr)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[{extras}]"],
        check=True,
    )  # fmt: skip
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "lint", "python", "tools"} or argv == ["tools"]:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    # lint type-checks the load tools too, which import locust and matplotlib (tools).
    ensure_venv("dev,tools" if command in {"tools", "lint"} else "dev")
    os.chdir(ROOT)
    if command == "serve":
        os.execv(PYTHON, [str(PYTHON), "-m", "server", *rest])
    if command == "test":
        os.execv(PYTHON, [str(PYTHON), "-m", "pytest", *rest])
    if command == "python":
        os.execv(PYTHON, [str(PYTHON), *rest])
    if command == "tools":
        program = VENV / "bin" / rest[0]
        os.execv(program, [str(program), *rest[1:]])
    lint = [
        [str(PYTHON), "-m", "ruff", "check", "."],
        [str(PYTHON), "-m", "ruff", "format", "--check", "."],
        [str(PYTHON), "-m", "mypy"],
        [str(VENV / "bin" / "hadolint"), "Dockerfile"],
    ]
    return max(subprocess.run(step, check=False).returncode for step in lint)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
