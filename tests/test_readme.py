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
