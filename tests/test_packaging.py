"""What a `pip install tritonconv` user gets: the wheel carries the kernels and the benchmark as
`tritonconv.kernels` and `tritonconv.bench`, and the `tritonconv-bench` command runs the quick suite in a
fresh virtual environment, from a folder that is not the checkout."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked_copy(dest: Path) -> Path:
    """The checkout's sources without build outputs, virtual environments or reports: a non-editable
    install builds in the source tree, which must not be this checkout."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "out", "__pycache__",
                                    ".pytest_cache")
    return Path(shutil.copytree(ROOT, dest, ignore=ignore))


def _fresh_venv(where: Path) -> Path:
    """A new virtual environment without pip whose only borrowed packages are this environment's
    dependencies (torch, triton, pandas, setuptools...): one path line per site directory, so the
    editable tritonconv of this environment (a .pth hook) is not seen there."""
    venv.create(where, with_pip=False)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(where), "platbase": str(where)}))
    purelib.mkdir(parents=True, exist_ok=True)
    (purelib / "borrowed.pth").write_text("".join(f"{d}\n" for d in site.getsitepackages()))
    return where / ("Scripts" if os.name == "nt" else "bin")


def test_installed_benchmark_command_runs_the_quick_suite(tmp_path):
    source = _tracked_copy(tmp_path / "src")
    bin_dir = _fresh_venv(tmp_path / "venv")
    python = bin_dir / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         "--no-build-isolation", "--ignore-installed", str(source)],
        capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}

    where = subprocess.run(
        [str(python), "-c", "import importlib.util as u, tritonconv, tritonconv.bench, tritonconv.kernels; "
                            "print(tritonconv.__file__); print(u.find_spec('bench'))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    package, bench_spec = where.stdout.split()
    # The installed copy, not the checkout's editable one, and no top-level `bench` leaks from the wheel.
    assert Path(package).is_relative_to(tmp_path / "venv"), package
    assert bench_spec == "None"

    run = subprocess.run([str(bin_dir / "tritonconv-bench"), "--suite", "quick"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Reports land under the working folder (never inside site-packages), and every check passed.
    report = elsewhere / "tritonconv-bench-out" / "quick.md"
    assert report.is_file(), run.stdout[-2000:]
    assert "0 of 24 checks (runs x modes) not correct" in run.stdout, run.stdout[-2000:]
    assert "tritonconv-bench" in subprocess.run([str(bin_dir / "tritonconv-bench"), "--help"], cwd=elsewhere,
                                                env=env, capture_output=True, text=True, timeout=60).stdout
