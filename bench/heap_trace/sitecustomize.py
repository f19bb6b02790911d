"""Loaded by a service the bench starts with ``--trace-heap`` (this folder on its
``PYTHONPATH``): snapshots of the Python heap (``tracemalloc``) every
``BENCH_TRACE_HEAP_EVERY_S`` into ``BENCH_TRACE_HEAP_DIR``, from ``BENCH_TRACE_HEAP_AFTER_S``
after start (start-up's imports traced would make it slower than readiness allows).
``python -m bench.heap <dir>`` compares them. Tracing slows the service several times:
its latency figures in such a run are not the service's."""

import os
import threading
import time

_directory = os.environ.get("BENCH_TRACE_HEAP_DIR")

if _directory:
    import tracemalloc

    def _snapshots(directory: str) -> None:
        time.sleep(float(os.environ.get("BENCH_TRACE_HEAP_AFTER_S", "100")))
        tracemalloc.start(10)
        every_s = float(os.environ.get("BENCH_TRACE_HEAP_EVERY_S", "40"))
        number = 0
        while True:
            time.sleep(every_s)
            path = os.path.join(directory, f"heap-{os.getpid()}-{number:03d}.bin")
            tracemalloc.take_snapshot().dump(path)
            number += 1

    os.makedirs(_directory, exist_ok=True)
    threading.Thread(target=_snapshots, args=(_directory,), daemon=True).start()
