"""The headroom table from the grids' results.json files (issue 11, item 2).

Usage: python benchmarks/headroom/summarize.py benchmarks/headroom [benchmarks/headroom/nlvr2-600 ...]
Prints, per grid and task: head-only vs full fine-tuning of the targets at the rate each chose
on validation (val / test, chosen lr, steps, train seconds), the headroom (full − head, val and
test), whether each sweep is bracketed, and the training loss over the run's last three fifths
(mean of each fifth: flat = plateau), and each chosen run's score per relation family where the
runs carry one (``accuracy/sum``…, val → test).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fifths(folder: Path) -> list[float]:
    losses = [json.loads(line)["task_loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    k = len(losses) // 5
    return [sum(losses[i * k:(i + 1) * k]) / k for i in range(5)]


def main(grids: list[str]) -> None:
    print("| grid | task | arm | val | test | lr (sweep: val) | bracketed | steps | train s | loss by fifth |")
    print("| --- | --- | --- | ---: | ---: | --- | --- | ---: | ---: | --- |")
    rows, families = {}, {}
    for grid in map(Path, grids):
        results = json.loads((grid / "results.json").read_text())
        chosen = {(s["task"], s["arm"]): s for s in results["sweeps"]}
        for run in results["runs"]:
            sweep = chosen[(run["task"], run["arm"])]
            vals = [s["val"] for s in sweep["scores"]]
            best = vals.index(max(vals))
            bracketed = 0 < best < len(vals) - 1
            cand = run["candidates"][run["primary"]]
            metric = run["metric"]
            loss = " / ".join(f"{x:.3f}" for x in fifths(grid / run["folder"]))
            swept = ", ".join(f"{s['lr']:g}: {s['val']:.3f}" for s in sweep["scores"])
            print(f"| {grid.name} | {run['task']} | {run['arm']} | {cand['val'][metric]:.4f} | {cand['test'][metric]:.4f} "
                  f"| **{run['lr']:g}** ({swept}) | {'yes' if bracketed else 'no'} | {run['steps']} "
                  f"| {run['train_seconds']:.0f} | {loss} |")
            rows[(grid.name, run["task"], run["arm"])] = (cand["val"][metric], cand["test"][metric])
            families[(grid.name, run["task"], run["arm"])] = {
                k.split("/", 1)[1]: (cand["val"][k], cand["test"][k]) for k in cand["test"] if "/" in k}
    print("\n| grid | task | headroom val (full − head) | headroom test |")
    print("| --- | --- | ---: | ---: |")
    for grid, task, arm in rows:
        if arm == "full" and (grid, task, "head-only") in rows:
            (fv, ft), (hv, ht) = rows[(grid, task, "full")], rows[(grid, task, "head-only")]
            print(f"| {grid} | {task} | {100 * (fv - hv):+.1f} pts | {100 * (ft - ht):+.1f} pts |")
    if any(families.values()):
        print("\n| grid | task | arm | per family, val → test |")
        print("| --- | --- | --- | --- |")
        for (grid, task, arm), fams in families.items():
            cells = "; ".join(f"{name} {v:.3f} → {t:.3f}" for name, (v, t) in fams.items())
            print(f"| {grid} | {task} | {arm} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["benchmarks/headroom"])
