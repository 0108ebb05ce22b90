"""The gpu test tier, the check's first row: ``pytest -m gpu tests/test_gpu.py`` in its own process group
within ``--tests-budget`` seconds; the row gives the outcome counts (per-test outcomes in the JSON, pytest's
output in ``OUT/gpu_tests.txt``)."""

import argparse
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from .. import last_line
from ..data import REPO
from . import Check, RowFailed, check
from .child import kill_tree, repo_env
from .probe import Data

GPU_TESTS = "tests/test_gpu.py"
OUTCOMES = ("passed", "failed", "error", "xfailed", "skipped")
PYTEST_EXIT = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}


def rows(args: argparse.Namespace, d: Data) -> list[Check]:
    hidden = " with CUDA hidden (`CUDA_VISIBLE_DEVICES=`, --cpu)" * args.cpu
    how, measure = f"`python -m pytest -m gpu {GPU_TESTS}`{hidden}", partial(run_gpu_tests, args, d.work)
    return [check(args, "tests", "tests", "gpu test tier", how, ("torch", "pytest", "tests"), measure)]


def junit_cases(path: Path) -> list[dict[str, str]]:
    """Each test of a pytest JUnit XML report: id, outcome (one of OUTCOMES) and message."""
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = ("failed" if child.tag == "failure" else "error"), child.get("message", "")
                break
            if child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome, message = ("xfailed" if xfail else "skipped"), child.get("message", "")
        test = f"{case.get('classname')}::{case.get('name')}"
        cases.append({"test": test, "outcome": outcome, "message": last_line(message)})
    return cases


def run_gpu_tests(args: argparse.Namespace, work: Path, left: float) -> dict[str, Any]:
    """The tier in its own process group (killed whole at its timeout); its counts, or ``RowFailed``."""
    timeout = min(left, args.tests_budget)
    args.out.mkdir(parents=True, exist_ok=True)
    output, junit = args.out / "gpu_tests.txt", args.out / "gpu_tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", GPU_TESTS, "-v", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}", f"--basetemp={work / 'pytest'}"]
    started, code = time.monotonic(), None
    with open(output, "wb") as sink:
        env = repo_env(args.cpu)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)  # pytest's group and the train.py sessions it started
            proc.wait()
    seconds, text = time.monotonic() - started, output.read_text(errors="replace")
    detail: dict[str, Any] = {"command": " ".join(cmd), "exit_code": code, "seconds": seconds, "output": str(output)}
    if code is None:
        finished = re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", text, re.M)
        begun = re.findall(r"^(\S+::\S+) ", text, re.M)
        running = begun[-1] if len(begun) > len(finished) else "start-up or teardown"
        detail["tests"] = [{"test": t, "outcome": o} for t, o in finished]
        raise RowFailed(f"timed out after {timeout:.0f} s (--tests-budget) in {running}; {len(finished)} done", detail)
    detail["tests"] = cases = junit_cases(junit) if junit.is_file() else []
    counts = Counter(c["outcome"] for c in cases)
    found = f"{', '.join(f'{counts[o]} {o}' for o in OUTCOMES if counts[o]) or 'no tests'} in {seconds:.0f} s"
    if code == 0:
        reasons = sorted({c["message"] for c in cases if c["outcome"] == "skipped"})
        return {"result": last_line(found + (f" ({'; '.join(reasons)})" if reasons else "")), **detail}
    failed = [c for c in cases if c["outcome"] in ("failed", "error")]
    if failed:
        raise RowFailed(last_line(f"{found}; {failed[0]['test'].rsplit('::', 1)[-1]}: {failed[0]['message']}"), detail)
    raise RowFailed(last_line(f"pytest exited {code} ({PYTEST_EXIT.get(code, '?')}): {last_line(text)}"), detail)
