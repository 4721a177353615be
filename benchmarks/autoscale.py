"""Autoscaling figures on the fake multi-node Ray cluster: a burst arrives, nodes join, drain it, and leave.

    python benchmarks/autoscale.py --n 600 --out runs/autoscale

Runs ``tests/workers/autoscale_scenario.py`` in private network + PID namespaces (as the
test does) with the demo model, then writes OUT/autoscale.json and OUT/autoscale.png
(backlog, worker nodes and running actors over time) and prints the times from the
push to the first node, to the first actor on a new node, to the drained stream,
and back to the minimum. Needs root or user namespaces, like the test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "workers"
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600, help="images in the burst")
    p.add_argument("--max-nodes", type=int, default=2)
    p.add_argument("--cooldown", type=float, default=5.0, help="seconds of empty backlog before scale-down")
    p.add_argument("--out", type=Path, default=Path("runs/autoscale"))
    args = p.parse_args()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(HARNESS))  # the namespace + fake-cluster harness of the tests
    from fake_cluster import namespace_unavailable, run_in_namespace
    from soak import demo_models_dir

    from ear_stream.inspect.visualize import line_chart_png

    why = namespace_unavailable()
    if why:
        sys.exit(why)
    args.out.mkdir(parents=True, exist_ok=True)
    models = demo_models_dir(args.out / "work")
    images = args.out / "work" / "data" / "synthetic" / "test"
    result = args.out / "autoscale.json"
    done = run_in_namespace(
        [sys.executable, str(HARNESS / "autoscale_scenario.py"), "--models", str(models), "--images", str(images),
         "--out", str(args.out / "parquet"), "--json", str(result), "--n", str(args.n),
         "--max-nodes", str(args.max_nodes), "--cooldown", str(args.cooldown), "--timeout", "900"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=1000,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    r = json.loads(result.read_text())
    tl = r["timeline"]
    series = {
        "backlog / 100": [(s["t"], s["backlog"] / 100) for s in tl],
        "worker nodes": [(s["t"], s["nodes"]) for s in tl],
        "running actors": [(s["t"], s["actors"]) for s in tl],
    }
    png = line_chart_png(series, title=f"burst of {r['n']} images, fake cluster", xlabel="seconds", ylabel="count")
    (args.out / "autoscale.png").write_bytes(png)
    ev = r["events"]
    t0 = ev["pushed"]
    rows = {
        "first node joined": ev.get("first_node"),
        "first actor running on a new node": ev.get("first_actor_on_new_node"),
        "stream drained": ev.get("drained"),
        "back to the minimum (0 nodes, 0 actors)": ev.get("back_to_min"),
    }
    print(f"burst {r['n']} images, max {args.max_nodes} nodes; missing {len(r['missing'])}, rows {r['rows']}")
    print("| event | seconds after the push |\n|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {'n/a' if t is None else f'{t - t0:.1f}'} |")
    print(f"plot: {args.out / 'autoscale.png'}")


if __name__ == "__main__":
    main()
