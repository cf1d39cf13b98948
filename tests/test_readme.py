"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no Python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    psnr_value = float(capsys.readouterr().out.split()[0])
    assert 20 < psnr_value < 60
