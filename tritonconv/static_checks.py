"""What the static GPU checks found: configurations the dispatcher must never tune or pick.

`python -m bench.static --space full --update-rejects` compiles every kernel in every configuration of
its tuning space for each target on the CPU (no GPU needed) and writes `static_rejects.json` beside this
file: per target, kernel, dtype and layout, the configurations that did not compile, needed more shared
memory than one block may have (227 KB on sm_90, 163 KB on sm_80), or spilled registers to local memory.
The layout matters: it decides which strides are the constant 1, so the same tiles can spill in NCHW and
not in channels_last. Whatever the file does not mention has no rejects (nothing is pruned).
"""

from __future__ import annotations

import collections
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonconv.dispatch import Config

REJECTS_PATH = Path(__file__).with_name("static_rejects.json")
# Verdicts of bench.static that reject a configuration (the other one is "ok").
REJECT_VERDICTS = ("no-compile", "smem-over-limit", "spills")


@functools.lru_cache(maxsize=None)
def static_rejects(target: str = "sm_90") -> dict[tuple[str, str, bool], frozenset[Config]]:
    """The rejected configurations for `target` ("sm_90" or "sm_80"), keyed by
    (kernel, str(dtype), channels_last), e.g. ("conv2d_forward", "torch.float16", True): look up
    (problem.kernel, str(problem.dtype), problem.channels_last). Read once per process. An entry found
    with another version of its kernel's source file (the hash differs) no longer says anything and is
    ignored, as are entries of kernels no longer registered."""
    # Imported here: dispatch imports this module.
    from tritonconv.dispatch import Config, kernels, spec  # noqa: PLC0415

    rejects: dict[tuple[str, str, bool], set[Config]] = collections.defaultdict(set)
    if REJECTS_PATH.exists():
        for entry in json.loads(REJECTS_PATH.read_text())["rejects"]:
            if (entry["target"] == target and entry["kernel"] in kernels()
                    and entry.get("source") == spec(entry["kernel"]).source_hash()):
                key = (entry["kernel"], entry["dtype"], entry["layout"] == "nhwc")
                rejects[key].add(Config.from_json(entry))
    return {key: frozenset(configs) for key, configs in rejects.items()}
