"""Benchmarks, static checks and the cost model for tritonconv.

In a source checkout this folder is the package `bench` (`python -m bench`, `python -m bench.cost`); a wheel
ships the same files as `tritonconv.bench` (`tritonconv-bench`, `python -m tritonconv.bench.cost`), as
`kernels/` ships as `tritonconv.kernels`. Modules here import each other relatively so both names work.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent

# Where reports go by default: beside the code in a checkout (bench/out, git-ignored); an installed package
# must not write into site-packages, so there they go under the working directory.
OUT = _HERE / "out" if (_HERE.parent / "pyproject.toml").is_file() else Path("tritonconv-bench-out")
