"""`python -m tritonconv cache {list,clear,path}`: inspect and manage the configuration cache."""

from __future__ import annotations

import argparse
import sys

from tritonconv.dispatch import CACHE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritonconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cache = commands.add_parser("cache", help="the tuned-configuration cache")
    cache.add_argument("action", choices=["list", "clear", "path"])
    args = parser.parse_args(argv)

    if args.action == "path":
        print(CACHE.path)
    elif args.action == "clear":
        count = len(CACHE.entries())
        CACHE.clear()
        print(f"removed {count} entries from {CACHE.path}")
    else:
        entries = CACHE.entries()
        print(f"{len(entries)} entries in {CACHE.path}")
        for entry in sorted(entries.values(), key=lambda e: (e.get("kernel", ""), e.get("shape", ""))):
            if "backend" in entry:
                what = f"backend: {entry['backend']}"
            else:
                config = entry["config"]
                what = ", ".join(f"{k}={v}" for k, v in config["meta"].items()) \
                    + f", num_warps={config['num_warps']}, num_stages={config['num_stages']}"
            time_ms = entry.get("time_ms")
            print(f"{entry.get('kernel', '?')}  [{entry.get('shape', '?')}]  on {entry.get('device', '?')}")
            print(f"    {what}" + (f"  ({time_ms:.4f} ms)" if time_ms is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
