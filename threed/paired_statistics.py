"""Comparing methods over seeds and prompts: means with standard errors, and paired differences (the same
prompt and seed, so the seed-to-seed spread that runs share cancels). The comparison and the quality table
both write these."""
from __future__ import annotations

import numpy as np


def mean_with_error(values: list[float], sign: str = "") -> str:
    """The mean and its standard error (the sample standard deviation over sqrt(n)) as "0.0123 ± 0.0004", or
    the mean alone for one value; ``sign="+"`` signs the mean."""
    values = np.asarray(values, dtype=np.float64)
    mean = f"{values.mean():{sign}.4f}"
    return f"{mean} ± {values.std(ddof=1) / np.sqrt(len(values)):.4f}" if len(values) > 1 else mean


def paired_difference(differences: list[float], better: int) -> str:
    """Paired differences (a method's value minus the reference's on the same prompt and seed) as
    "mean ± standard error, median M (wins/pairs)", a win being a difference of sign ``better``."""
    mean = mean_with_error(differences, sign="+")
    wins = sum(better * d > 0 for d in differences)
    return f"{mean}, median {float(np.median(differences)):+.4f} ({wins}/{len(differences)})"


PAIRED = (("chamfer", "Chamfer", -1), ("iou", "IoU", 1), ("color_error", "colour error", -1))  # key, name, better sign


def paired_comparison(rows: list[dict], methods: list[str]) -> list[str]:
    """Markdown lines: each method's means over all its runs with their standard errors, and its differences
    from the first method on the same prompts and seeds (paired: mean difference, standard error, median
    difference, and in how many pairs it was the better)."""
    reference = methods[0]
    by_run = {(r["method"], r["prompt"], r["seed"]): r for r in rows}
    lines = ["", f"Means over prompts and seeds (± standard error), and paired differences from {reference} on the "
                 "same prompt and seed (± standard error, the median difference, and the pairs where the method is the better):", "",
             "| method | runs | Chamfer | IoU | colour error | " + " | ".join(f"{name} − {reference}" for _, name, _ in PAIRED) + " |",
             "|---|---|" + "---|" * (3 + len(PAIRED))]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        means = [mean_with_error([r[key] for r in mine]) for key, _, _ in PAIRED]
        differences = []
        for key, _, better in PAIRED:
            pairs = [(r[key], by_run[(reference, r["prompt"], r["seed"])][key]) for r in mine
                     if (reference, r["prompt"], r["seed"]) in by_run]
            if method == reference or not pairs:
                differences.append("")
                continue
            differences.append(paired_difference([a - b for a, b in pairs], better))
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(means) + " | "
                     + " | ".join(differences) + " |")
    return lines
