"""Print the pip requirements of the backend table (backends/*.toml), one per line.

python ci/requirements.py            # the rows that run on a CPU (what CI installs)
python ci/requirements.py --gpu      # the rows that need a GPU (cupy, torch on CUDA, JAX on GPU)

The table is read by gruxp's own reader (src/gruxp/_backend_table.py, loaded by path: gruxp is not
installed yet when CI runs this).
"""

import importlib.util
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("_backend_table", root / "src" / "gruxp" / "_backend_table.py")
assert spec is not None and spec.loader is not None
table = importlib.util.module_from_spec(spec)
sys.modules["_backend_table"] = table  # dataclasses look their module up while the file runs
spec.loader.exec_module(table)

gpu = "--gpu" in sys.argv[1:]
for row in table.rows(root / "backends"):
    if row.needs_gpu == gpu:
        print(row.requirement)
