"""`python -m bench --suite NAME [--dtype ...] [--layout ...] [--mode fwd|fwdbwd] [--out DIR]`, `python -m bench
--list`: benchmark tritonconv against PyTorch (see bench/run.py)."""

import os
import sys

import torch

if not torch.cuda.is_available():
    # No GPU: run the kernels in Triton's interpreter. Must happen before anything imports triton.
    os.environ["TRITON_INTERPRET"] = "1"

from bench.run import main  # noqa: E402

sys.exit(main())
