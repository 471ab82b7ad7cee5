"""Print the pip requirements of the backend table (backends/*.toml), one per line.

python ci/requirements.py            # CPU backends (what CI installs)
python ci/requirements.py --gpu      # the GPU-only ones (cupy)
"""

import sys
from pathlib import Path

import tomllib

gpu = "--gpu" in sys.argv[1:]
for path in sorted((Path(__file__).resolve().parents[1] / "backends").glob("*.toml")):
    spec = tomllib.loads(path.read_text())
    if bool(spec.get("needs_gpu")) == gpu:
        print(spec["requirement"])
