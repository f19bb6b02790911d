"""Compare the heap snapshots of a service run with ``bench.run --trace-heap``.

``python -m bench.heap <dir> [--top N]``: the traced total of every snapshot (a heap that
grows with the complaints grows here; one that holds steady while the process's RSS creeps
points at the allocator or at memory outside Python's), then the allocation sites that grew
most from the first snapshot to the last.
"""

from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path

IGNORED = [
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    paths = sorted(args.directory.glob("heap-*.bin"))
    if len(paths) < 2:
        raise SystemExit(f"fewer than two snapshots in {args.directory}")
    snapshots = [tracemalloc.Snapshot.load(str(path)).filter_traces(IGNORED) for path in paths]
    for path, snapshot in zip(paths, snapshots, strict=True):
        traced = sum(stat.size for stat in snapshot.statistics("filename"))
        print(f"{path.name}  {traced / 1e6:8.2f} MB traced")
    print(f"grown most from {paths[0].name} to {paths[-1].name}:")
    for stat in snapshots[-1].compare_to(snapshots[0], "lineno")[: args.top]:
        frame = stat.traceback[0]
        where = f"{frame.filename}:{frame.lineno}"
        print(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:8d}  {where}")


if __name__ == "__main__":
    main()
