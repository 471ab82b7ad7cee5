"""Every Python block of README.md and of the docs runs as pasted, in a fresh interpreter, and prints what it says.

A ```python block followed (after blank lines only) by a ```text block must print that text: words
exactly, numbers within 2% (float32 training on another CPU's BLAS kernel may move a last digit).
A block that imports a library that is not installed, or CuPy without a GPU, is skipped with the
reason; nothing else is.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, expected output or None) for each ```python block of ``page``."""
    text = page.read_text()
    found, matches = [], list(FENCE.finditer(text))
    for i, m in enumerate(matches):
        if m.group(1) != "python":
            continue
        expected = None
        nxt = matches[i + 1] if i + 1 < len(matches) else None
        if nxt is not None and nxt.group(1) == "text" and not text[m.end() : nxt.start()].strip():
            expected = nxt.group(2)
        found.append((text.count("\n", 0, m.start()) + 1, m.group(2), expected))
    return found


def _missing(code: str) -> str | None:
    for name in sorted(set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", code, re.M))):
        if importlib.util.find_spec(name) is None:
            return f"needs {name}, which is not installed"
    if re.search(r"^\s*import cupy", code, re.M):
        probe = "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0"
        if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0:
            return "needs a CUDA device for CuPy"
    return None


def _same(got: str, want: str) -> bool:
    got_tokens, want_tokens = got.split(), want.split()
    if len(got_tokens) != len(want_tokens):
        return False
    for g, w in zip(got_tokens, want_tokens, strict=True):
        if NUMBER.match(w) and NUMBER.match(g):
            if abs(float(g) - float(w)) > 0.02 * max(abs(float(w)), 1e-12):
                return False
        elif g != w:
            return False
    return True


def test_the_readme_and_docs_have_runnable_blocks():
    found = blocks(ROOT / "README.md")
    assert len(found) >= 5 and sum(expected is not None for _, _, expected in found) >= 5
    assert sum(len(blocks(page)) for page in PAGES[1:]) >= 8


def _all_blocks():
    return [
        pytest.param(line, code, expected, id=f"{page.relative_to(ROOT)}:{line}")
        for page in PAGES
        for line, code, expected in blocks(page)
    ]


@pytest.mark.parametrize("line, code, expected", _all_blocks())
def test_block_runs_as_pasted(tmp_path, line, code, expected):
    reason = _missing(code)
    if reason:
        pytest.skip(f"block at line {line} {reason}")
    script = tmp_path / "block.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"block at line {line} failed:\n{proc.stderr[-3000:]}"
    if expected is not None:
        assert _same(proc.stdout, expected), f"block at line {line} printed:\n{proc.stdout}\nthe page says:\n{expected}"
