"""Start-up cost of an evaluation process: lmms-eval's TaskManager indexing its ~2000 built-in tasks vs only
our benchmarks/ folder (what ``vppo eval`` does), each in a fresh interpreter, side by side.

Each variant: import lmms-eval's task module, build the TaskManager, load vppo_geo3k from fixture data.
The import time is the same for both and printed separately; the ratio compares index + load.

    python bench/bench_eval_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from lmms_eval.tasks import TaskManager
t1 = time.perf_counter()
from vppo.evaluation.runner import default_tasks_dir
tm = TaskManager(verbosity="ERROR", include_path=str(default_tasks_dir()), include_defaults=sys.argv[1] == "1")
t2 = time.perf_counter()
tm.load_task_or_group(["vppo_geo3k"], task_type="chat")
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "index_s": t2 - t1, "load_s": t3 - t2, "n_tasks": len(tm.all_tasks)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from vppo.data.eval_data import write_fixtures

    with tempfile.TemporaryDirectory() as data:
        write_fixtures(data, n_rows=3)
        env = {**__import__("os").environ, "VPPO_EVAL_DATA": data, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        runs = {}
        for name, flag in (("all lmms-eval tasks + ours", "1"), ("ours only (vppo eval)", "0")):
            runs[name] = [json.loads(subprocess.run([sys.executable, "-c", CHILD, flag], env=env, check=True,
                                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
                          for _ in range(args.repeats)]
    print(f"{'variant':<28} {'tasks':>6} {'import s':>9} {'index s':>8} {'load s':>7}")
    medians = {}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("import_s", "index_s", "load_s")}
        medians[name] = med["index_s"] + med["load_s"]
        print(f"{name:<28} {rs[0]['n_tasks']:>6} {med['import_s']:9.2f} {med['index_s']:8.2f} {med['load_s']:7.2f}")
    slow, fast = medians.values()
    print(f"index + load: {slow:.2f} s vs {fast:.2f} s -> {slow / fast:.1f}x less start-up with our folder only")


if __name__ == "__main__":
    main()
