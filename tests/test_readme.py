"""The README is a test: every fenced ``bash`` block of README.md and docs/ runs here, as a user
would type it, and must end the way the text says (exit 0; every run it starts completes; a run
leaves ``analysis/report.md`` with its figures, a sweep its sweep report).

How a block is run (README, "Testing the documented commands"):
- in an empty folder holding the checkout's ``run.py`` and ``analysis/`` (so outputs/ and
  multirun/ start empty), with ``DISCOGRAD_SHRINK=4``: every run is cut to 4 steps and small
  evaluations (discograd/experiment/launch.py, ``shrink``); nothing else changes;
- ``python -m pip install ... &&`` is dropped (the environment under test is that install, made
  by .ci/run with the README's own command), and the test command itself (``python -m pytest``)
  is checked to be the one .ci/run runs instead of being run again;
- the placeholders ``outputs/DATE/TIME.ID`` and ``multirun/DATE/TIME.ID`` stand for the newest
  such folder;
- a block preceded by ``<!-- readme-test: slurm -->`` runs the same way against a SLURM cluster
  (the ``slurm_cluster`` fixture: the machine's own or scripts/local-slurm.sh's); such a test is
  marked ``slurm`` (``python -m pytest -m slurm``, run by .ci/run);
- a block preceded by ``<!-- readme-test: compose -->`` only illustrates (a GPU cluster): its
  ``run.py`` commands are composed (``--cfg job``; every job of a ``-m`` sweep, launcher
  included) and its ``analysis.reproduce`` commands printed
  (``--dry-run``), not run.
Fences in another language (``text``) are synopses and layouts, not commands; a fence that holds
a ``python`` command line must be one or the other (a test below).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?P<marker><!-- readme-test: (?P<mode>\w+) -->\n[ \t]*)?```(?P<lang>[\w-]*)\n"
                   r"(?P<body>.*?)```", re.S)
TEST_COMMAND = 'python -m pip install -e ".[dev]" && python -m pytest -n 2'


def blocks():
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            line = text[:m.start("body")].count("\n") + 1
            out.append((doc.relative_to(ROOT), line, m.group("lang"), m.group("mode") or "run",
                        m.group("body")))
    return out


def commands(body: str) -> list[str]:
    """The block's command lines, continuation lines joined."""
    return [c.strip() for c in body.replace("\\\n", " ").splitlines()
            if c.strip() and not c.strip().startswith("#")]


def _strip_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command)


def script(body: str, mode: str) -> str:
    """The block as the bash script this test runs (see the module docstring)."""
    lines = ["set -euo pipefail"]
    for c in commands(body):
        c = re.sub(r"^python -m pip install \S+(\s+\S+)*? && ", "", c)
        if re.match(r"^python -m pytest\b", c):
            continue                                     # the suite itself: see the test below
        c = c.replace("outputs/DATE/TIME.ID", '"$(ls -d outputs/*/* | tail -n 1)"')
        c = c.replace("multirun/DATE/TIME.ID", '"$(ls -d multirun/*/* | tail -n 1)"')
        if mode == "compose":
            c = _strip_comment(c)
            if "run.py" in c:
                c += " --cfg job"
            elif "analysis.reproduce" in c:
                c += " --dry-run"
            else:
                raise AssertionError(f"a compose-only block holds a command it cannot compose: {c}")
        lines += [f"echo {shlex.quote('+ ' + c)}", c]
    return "\n".join(lines) + "\n"


RUNNABLE = [pytest.param(doc, line, mode, body, id=f"{doc}:{line}",
                         marks=[pytest.mark.slurm] if mode == "slurm" else [])
            for doc, line, lang, mode, body in blocks() if lang in ("bash", "sh")]


def _folders(cwd: Path) -> tuple[list[Path], list[Path]]:
    runs = sorted(p for p in (cwd / "outputs").glob("*/*") if p.is_dir())
    sweeps = sorted(p for p in (cwd / "multirun").glob("*/*") if p.is_dir())
    return runs, sweeps


def _summaries(folder: Path) -> list[tuple[Path, dict]]:
    return [(p.parent, json.loads(p.read_text())) for p in folder.rglob("summary.json")]


@pytest.mark.slow
@pytest.mark.parametrize("doc,line,mode,body", RUNNABLE)
def test_documented_commands_run_and_end_as_the_text_says(doc, line, mode, body, tmp_path, request):
    if mode == "slurm":
        request.getfixturevalue("slurm_cluster")
    for name in ("run.py", "analysis", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "python"          # `python` = this interpreter (a symlink would leave its venv)
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "DISCOGRAD_SHRINK": "4", "PYTHONPATH": ""}
    r = subprocess.run(["bash", "-c", script(body, mode)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{doc}:{line}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    runs, sweeps = _folders(tmp_path)
    for folder in runs + sweeps:
        done = _summaries(folder)
        assert done, f"{folder} holds no run"
        bad = [(str(p), s["status"], s.get("error")) for p, s in done if s["status"] != "completed"]
        assert not bad, bad
        report = folder / "analysis" / "report.md"
        assert report.exists(), f"{doc}:{line}: no report in {folder}"
        assert list(report.parent.glob("*.png")), f"{doc}:{line}: the report of {folder} has no figure"
        for png in re.findall(r"\]\(([^)]+\.png)\)", report.read_text()):
            assert (report.parent / png).exists(), f"{report} shows {png}, which is not there"


def test_the_readme_test_command_is_what_ci_runs():
    """Quick start command 2 is not run by the test above (it is the test suite); .ci/run runs
    it, in a virtual environment it creates."""
    readme = (ROOT / "README.md").read_text()
    assert TEST_COMMAND in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()
    assert re.search(r"python -m venv", ci) and re.search(r"\. \S*/bin/activate", ci)


def test_the_quick_start_has_exactly_two_commands():
    doc, line, lang, mode, body = next(b for b in blocks()
                                       if b[0].name == "README.md" and b[2] == "bash")
    assert "## Quick start" in (ROOT / "README.md").read_text().split("```bash")[0]
    assert lang == "bash" and mode == "run"
    cmds = commands(body)
    assert len(cmds) == 2 and cmds[0] == "python -m pip install -e . && python run.py", cmds
    assert cmds[1] == TEST_COMMAND


def test_every_fence_with_a_command_is_run_or_marked():
    """A ``python ...`` line in a fence that is neither bash (run) nor text (a synopsis or a
    layout) would be neither tested nor declared untested."""
    for doc, line, lang, mode, body in blocks():
        if any(c.startswith("python ") for c in commands(body)):
            assert lang in ("bash", "sh", "text"), f"{doc}:{line}: fence '{lang}' holds commands"
        assert mode in ("run", "compose", "slurm"), f"{doc}:{line}: unknown marker {mode}"
