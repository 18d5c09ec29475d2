"""`fer-automl` (runners/cli.py) as a user's shell sees it: a child process of `python -m runners.cli`.

Only deliberate user errors (`fer_models.errors.UserError`) exit 2 with one message; anything else
is a bug: Python's traceback and exit 1 (a bug at the end of a long search must not look like bad
input); Ctrl-C exits 130; a command group that fails to import fails every command, never
disappears from the CLI.

The faults are real: a copy of the `runners` package in a temporary folder, first on PYTHONPATH,
with one command module replaced (a group whose commands raise, or send themselves SIGINT) or
broken (an import that fails). `fer_models` and `search_spaces` come from the repository.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAULT_GROUP = '''
"""A command group whose commands fail the way the test asks."""
import os
import signal
import time


def register(sub):
    p = sub.add_parser("models")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    for name, func in (("keyerror", _keyerror), ("valueerror", _valueerror), ("usererror", _usererror),
                       ("sigint", _sigint)):
        msub.add_parser(name).set_defaults(func=func)


def _keyerror(args):
    return {}["a_key_the_code_forgot"]


def _valueerror(args):
    raise ValueError("an internal invariant broke")


def _usererror(args):
    from fer_models.errors import UserError
    raise UserError("--thing 'x': not a thing (valid: a, b)\\nsecond line of the same error")


def _sigint(args):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
    return 0
'''


@pytest.fixture
def runners_copy(tmp_path):
    """A copy of the `runners` package in tmp_path (put first on the child's PYTHONPATH)."""
    root = tmp_path / "pkgs"
    shutil.copytree(REPO / "runners", root / "runners", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run(root: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "runners.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=str(root), env=env)


def test_a_bug_prints_its_traceback_and_exits_1(runners_copy):
    (runners_copy / "runners" / "commands" / "models.py").write_text(FAULT_GROUP)
    res = run(runners_copy, "models", "keyerror")
    assert res.returncode == 1, res.stderr
    assert "Traceback (most recent call last)" in res.stderr
    assert "KeyError: 'a_key_the_code_forgot'" in res.stderr
    assert "fer-automl: error" not in res.stderr  # not dressed up as bad input
    # a plain ValueError is a bug too (only the UserError family is the user's fault)
    res = run(runners_copy, "models", "valueerror")
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert "ValueError: an internal invariant broke" in res.stderr


def test_a_user_error_is_one_message_per_line_and_exits_2(runners_copy):
    (runners_copy / "runners" / "commands" / "models.py").write_text(FAULT_GROUP)
    res = run(runners_copy, "models", "usererror")
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == ["fer-automl: error: --thing 'x': not a thing (valid: a, b)",
                                       "fer-automl: error: second line of the same error"]


def test_ctrl_c_exits_130_without_a_traceback(runners_copy):
    (runners_copy / "runners" / "commands" / "models.py").write_text(FAULT_GROUP)
    res = run(runners_copy, "models", "sigint")
    assert res.returncode == 130, res.stderr
    assert "fer-automl: interrupted" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("breakage,argv", [
    ("an-import-inside-fails", ["space", "show", "quickstart"]),
    ("the-module-is-missing", ["space", "show", "quickstart"]),
    ("the-module-is-missing", ["--help"]),
])
def test_a_group_that_fails_to_import_fails_the_cli(runners_copy, breakage, argv):
    """The broken group (evaluate) is not the one run: the CLI must still refuse to start, naming
    what is missing (a deleted module was once skipped without a word)."""
    mod = runners_copy / "runners" / "commands" / "evaluate.py"
    if breakage == "an-import-inside-fails":
        mod.write_text(mod.read_text() + "\nimport a_module_that_is_not_installed\n")
        missing = "a_module_that_is_not_installed"
    else:
        mod.unlink()
        missing = "runners.commands.evaluate"
    res = run(runners_copy, *argv)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" in res.stderr
    assert f"ModuleNotFoundError: No module named '{missing}'" in res.stderr
    assert "usage:" not in res.stdout  # no help printed as if nothing were wrong


def test_a_reader_that_goes_away_stops_the_output_quietly(tmp_path):
    """`fer-automl space sample unified -n 3000 | head -1`: no BrokenPipeError traceback; the exit
    code a shell gives a writer killed by SIGPIPE (141). The real CLI, unmodified."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "runners.cli", "space", "sample", "quickstart", "-n", "20000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path), env=env)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith(b"[0] ") and err == ""


def test_the_user_error_family_imports_without_torch():
    """`fer_models.errors` is what every layer (and the CLI's error handling) imports: it must not
    pull torch and timm in (seconds), or `fer-automl --help` and every usage error wait for them."""
    code = ("import sys\nimport fer_models.errors\nfrom fer_models import UserError, UserPathError\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'\n"
            "from fer_models import build_model, preset_config\n"
            "assert build_model(preset_config('baseline')).branches == ['global']\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    assert res.returncode == 0, res.stderr
