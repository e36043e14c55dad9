"""`python -m tritonconv cache {list,clear,path}`: inspect and manage the configuration cache."""

from __future__ import annotations

import argparse
import sys

from tritonconv.dispatch import CACHE


def _field(entry: object, name: str) -> str:
    """An entry's field as text, '?' when the entry is not a JSON object or lacks it."""
    return str(entry.get(name, "?")) if isinstance(entry, dict) else "?"


def _describe(entry: object) -> str:
    """What an entry holds, or why it is damaged: the file is user-writable, and listing must show a bad
    entry (the ops ignore it with a warning) rather than fail on it."""
    if isinstance(entry, dict) and "backend" in entry:
        return f"backend: {entry['backend']}"
    try:
        config = entry["config"]
        text = ", ".join(f"{k}={v}" for k, v in config["meta"].items())
        text += f", num_warps={config['num_warps']}, num_stages={config['num_stages']}"
    except (KeyError, TypeError, AttributeError) as err:
        return f"damaged entry ({type(err).__name__}: {err}); the ops ignore it, `cache clear` removes it"
    time_ms = entry.get("time_ms")
    return text + (f"  ({time_ms:.4f} ms)" if isinstance(time_ms, (int, float)) else "")


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
        for key, entry in sorted(entries.items(), key=lambda item: _field(item[1], "kernel") + _field(item[1], "shape")):
            print(f"{_field(entry, 'kernel')}  [{_field(entry, 'shape')}]  on {_field(entry, 'device')}")
            print(f"    {_describe(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
