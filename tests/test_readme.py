"""README's examples run as written (so they stay true)."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def python_blocks():
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(tmp_path, monkeypatch, index):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README block {index}", "exec"), {})


def test_readme_test_command_prints_pytest_summary(tmp_path):
    """README's test command (`pytest -q tests`) must end with pytest's summary line; with
    `-q` in the project's addopts too, pytest ran at -qq and printed no summary at all."""
    import subprocess
    import sys

    with open(README) as f:
        text = f.read()
    assert "pytest -q tests" in text
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_one():\n    assert 1 + 1 == 2\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                          os.path.join(root, "pyproject.toml"), "--rootdir", root, str(probe)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^1 passed", out.stdout, re.M), out.stdout


def test_python_m_gradcore_takes_help_and_info():
    """``python -m gradcore --help`` prints usage (it used to run the demo), ``--info`` the
    build information only, and a bad ``--epochs`` is a usage error (status 2)."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "gradcore", *args], capture_output=True, text=True, timeout=120)

    helped = run("--help")
    assert helped.returncode == 0 and "usage: python -m gradcore" in helped.stdout
    assert "training" not in helped.stdout
    info = run("--info")
    assert info.returncode == 0 and "simd:" in info.stdout and "training a 3-layer" not in info.stdout
    bad = run("--epochs", "0")
    assert bad.returncode == 2 and "--epochs" in bad.stderr
