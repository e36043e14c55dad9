"""`python -m bench --suite NAME [--dtype ...] [--layout ...] [--mode fwd|fwdbwd] [--out DIR]`, `python -m bench
--list` (installed: `tritonconv-bench ...`): benchmark tritonconv against PyTorch (see bench/run.py)."""

import os
import sys


def entry() -> int:
    """The console command: chooses Triton's mode, then runs the benchmark CLI."""
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        # No GPU: run the kernels in Triton's interpreter. Triton reads this when a kernel is defined, so it
        # must be set before anything imports triton. The console script imports the tritonconv package (and
        # so triton) before calling this function: start again, as `python -m`, with the interpreter on.
        os.environ["TRITON_INTERPRET"] = "1"
        if "triton" in sys.modules:
            os.execv(sys.executable, [sys.executable, "-m", __package__, *sys.argv[1:]])
    from .run import main

    return main()


if __name__ == "__main__":
    sys.exit(entry())
