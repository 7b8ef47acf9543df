"""Print the runtime requirements of the image, one per line, from pyproject.toml (the single source).

The image needs the package's dependencies plus the `postgres` and `dashboard` extras (tune workers
talk to PostgreSQL; the chart runs optuna-dashboard from the same image). torch is left out: the
Dockerfile installs it first, in its own layer, as the CUDA or CPU build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

EXTRAS = ("postgres", "dashboard")


def requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *(r for extra in EXTRAS for r in extras[extra])]
    return [r for r in wanted if re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() != "torch"]


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
