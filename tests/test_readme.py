"""The README's "Using it" block, run as written, in order, in a fresh home and working directory.

The block is this test's input: a command added to the README is run here, so the README and the
product cannot drift apart. Each line runs in one bash process (so ``INV=$(...)`` carries over to
the next lines) with ``set -e``-like checks after each; a line that exits non-zero or prints a
traceback fails the test, naming the line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def using_it_block() -> list[str]:
    """The command lines of the first ``sh`` block under the README's "## Using it" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Using it\n", 1)[1]
    match = re.search(r"```sh\n(.*?)\n```", section, re.S)
    assert match is not None, "the Using it section has no ```sh block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def _script(lines: list[str]) -> str:
    out = ["set -u -o pipefail"]
    for i, line in enumerate(lines):
        out.append(f"echo {shlex.quote(f'### [{i}] {line}')}")
        out.append(line)
        out.append(
            f'rc=$?; if [ $rc -ne 0 ]; then echo "### FAILED (exit $rc): [{i}]"; exit 97; fi'
        )
    return "\n".join(out) + "\n"


def test_the_block_is_the_walkthrough() -> None:
    lines = using_it_block()
    # The block covers the first hour: the venv, validation, the scenario world and approval.
    assert lines[0].startswith("source .venv/bin/activate")
    joined = "\n".join(lines)
    for needed in ("experiments validate", "vigil sim", "investigate --scenario", "approve"):
        assert needed in joined


def test_every_command_of_the_readme_runs_in_a_fresh_home(tmp_path: Path) -> None:
    home = tmp_path / "clone"
    home.mkdir()
    for name in (".venv", "examples", "evals"):  # what a clone has; nothing else
        (home / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(HOME=str(home), COLUMNS="160", PYTHONDONTWRITEBYTECODE="1")
    env.pop("VIRTUAL_ENV", None)
    lines = using_it_block()
    done = subprocess.run(
        ["bash", "-c", _script(lines)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # about a minute on an idle 2-core machine; far more under a loaded one
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    for i in range(len(lines)):
        assert f"### [{i}]" in done.stdout  # every line ran
    # What the walkthrough promises, seen in its own output.
    assert "nothing changed" in done.stdout
    assert (home / "report.md").read_text().startswith("# Vigil investigation")
    assert (home / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "executed, approved by sim" in done.stdout
