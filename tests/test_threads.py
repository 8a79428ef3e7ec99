"""The CPU thread policy (discograd.threads): a count from the load at start, an explicit choice wins,
and the real command line's torch sees the count chosen."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from discograd import threads


@pytest.mark.parametrize("busy,cores,expected", [
    (0.0, 2, 2), (0.4, 2, 2), (0.6, 2, 1), (2.0, 2, 1), (5.0, 2, 1), (None, 2, 2),
    (1.2, 8, 7), (0.0, 1, 1),
])
def test_threads_are_the_cores_others_leave_free(busy, cores, expected):
    assert threads.threads_for(busy, cores) == expected


def test_count_from_the_load(monkeypatch):
    env = {}
    monkeypatch.setattr(threads, "busy_cores", lambda window=threads.WINDOW: 1.0)
    monkeypatch.setattr(threads, "cpus", lambda: {0, 1})
    assert threads.configure_threads(env) == {"OMP_NUM_THREADS": "1"}
    assert env["OMP_NUM_THREADS"] == "1"
    assert env[threads.MARK] == f"{os.getpid()}:OMP_NUM_THREADS"
    # idempotent within one process: a second call changes nothing
    monkeypatch.setattr(threads, "busy_cores", lambda window=threads.WINDOW: 0.0)
    assert threads.configure_threads(env) == {} and env["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_an_explicit_count_is_left_alone(monkeypatch, var):
    monkeypatch.setattr(threads, "busy_cores", lambda window=threads.WINDOW: 2.0)
    env = {var: "2"}
    assert threads.configure_threads(env) == {}
    assert {k: v for k, v in env.items() if k != threads.MARK} == {var: "2"}


def test_off_and_a_number(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda window=threads.WINDOW: 2.0)
    env = {threads.ENV: "off"}
    assert threads.configure_threads(env) == {} and "OMP_NUM_THREADS" not in env
    env = {threads.ENV: "3"}
    assert threads.configure_threads(env) == {"OMP_NUM_THREADS": "3"}


@pytest.mark.parametrize("bad", ["many", "2.5", "-1"])
def test_a_bad_setting_names_the_value_and_the_accepted_ones(bad):
    with pytest.raises(ValueError, match=rf"DISCOGRAD_THREADS='?{bad}'? is invalid: accepted: auto, off"):
        threads.configure_threads({threads.ENV: bad})


def test_a_child_chooses_again_what_its_parent_chose(monkeypatch):
    """A launcher worker inherits the parent's OMP_NUM_THREADS; it was not the user's, so the worker
    decides again from the load it sees."""
    monkeypatch.setattr(threads, "busy_cores", lambda window=threads.WINDOW: 0.0)
    monkeypatch.setattr(threads, "cpus", lambda: {0, 1})
    env = {"OMP_NUM_THREADS": "1", threads.MARK: "1:OMP_NUM_THREADS"}   # set by process 1
    assert threads.configure_threads(env) == {"OMP_NUM_THREADS": "2"}


def test_busy_cores_measures_something():
    busy = threads.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= len(threads.cpus()) + 1e-9


def _torch_threads(env_extra: dict[str, str]) -> tuple[int, str]:
    """torch.get_num_threads() in a process that imports discograd.cli first, as run.py does."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.MARK, threads.ENV)}
    env.update(env_extra)
    code = ("import discograd.cli, os, torch; "
            "print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    n, omp = out.stdout.split()
    return int(n), omp


def test_the_command_line_sets_torch_threads_before_torch_loads():
    assert _torch_threads({threads.ENV: "1"}) == (1, "1")
    n, omp = _torch_threads({"OMP_NUM_THREADS": "1", threads.ENV: "auto"})   # the user's choice
    assert (n, omp) == (1, "1")


def test_a_bad_setting_is_a_message_not_a_traceback(tmp_path):
    env = dict(os.environ, DISCOGRAD_THREADS="many")
    out = subprocess.run([sys.executable, "-m", "discograd", "model=toy"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "DISCOGRAD_THREADS='many' is invalid" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()
