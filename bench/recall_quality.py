"""Recall quality on MovieLens-100K: popularity vs implicit's defaults vs the project's model.

Protocol: per user the latest 20% of interactions by timestamp are held out (users with fewer than
5 interactions train only); every model ranks all items with the user's training items excluded.
Metrics: Recall@20 (denominator min(|held-out|, 20)), NDCG@10 (log2 discount, binary gains) and
HitRate@10, means over the 943 test users. The project's model is ALS whose hyper-parameters are
tuned on a time-based validation split carved out of the training data (never the test split).
Each row is the median of ``--repeats`` runs with different seeds.

Run: ``make bench-recall`` or ``python -m bench.recall_quality [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from shopserve.interactions import Interactions, temporal_split
from training.data.movielens import load_movielens_100k
from training.recall.train import (
    DEFAULT_GRID,
    MFParams,
    TopKResult,
    evaluate_model,
    evaluate_popularity,
    fit,
    tune,
)

RESULTS = Path(__file__).parent / "results" / "recall_quality.md"


def _median_row(
    name: str, runs: list[tuple[TopKResult, float]]
) -> tuple[str, float, float, float, float]:
    return (
        name,
        statistics.median(r.recall_at_20 for r, _ in runs),
        statistics.median(r.ndcg_at_10 for r, _ in runs),
        statistics.median(r.hit_rate_at_10 for r, _ in runs),
        statistics.median(s for _, s in runs),
    )


def _runs(
    train: Interactions, test: Interactions, params: MFParams, repeats: int
) -> list[tuple[TopKResult, float]]:
    out = []
    for seed in range(repeats):
        model = fit(train, replace(params, seed=seed), show_progress=False)
        out.append((evaluate_model(model, train, test), model.train_seconds))
    return out


def format_table(rows: list[tuple[str, float, float, float, float]]) -> str:
    """Aligned text (and Markdown) table."""
    header = ("model", "Recall@20", "NDCG@10", "HitRate@10", "train s")
    lines = [
        "| " + " | ".join(f"{h:<38}" if i == 0 else f"{h:>10}" for i, h in enumerate(header))
        + " |",
        "|" + "|".join("-" * 40 if i == 0 else "-" * 12 for i in range(len(header))) + "|",
    ]
    for name, rec, ndcg, hit, secs in rows:
        lines.append(f"| {name:<38} | {rec:>10.4f} | {ndcg:>10.4f} | {hit:>10.4f} | {secs:>10.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the MovieLens-100K table and write it to bench/results/recall_quality.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="seeds per model (median reported)")
    parser.add_argument("--quick", action="store_true", help="a small tuning grid")
    args = parser.parse_args(argv)

    log = load_movielens_100k()
    train, test = temporal_split(log, holdout_fraction=0.2, min_interactions=5)
    print(f"MovieLens-100K: {len(log)} interactions, train {len(train)}, test {len(test)}")

    grid = dict(DEFAULT_GRID)
    if args.quick:
        grid = {"factors": (32, 64), "regularization": (0.1,), "alpha": (1.0, 5.0),
                "bm25": (True, False), "iterations": (15,)}
    start = time.perf_counter()
    tuned, tried = tune(train, grid=grid)
    tune_seconds = time.perf_counter() - start
    print(f"tuned on a validation split of train: {len(tried)} configurations in "
          f"{tune_seconds:.1f}s -> {asdict(tuned)}")

    popularity: Callable[[], tuple[TopKResult, float]] = lambda: (  # noqa: E731
        evaluate_popularity(train, test), 0.0)
    rows = [
        _median_row("popularity", [popularity()]),
        _median_row("implicit ALS, library defaults",
                    _runs(train, test, MFParams.library_default("als"), args.repeats)),
        _median_row("implicit BPR, library defaults",
                    _runs(train, test, MFParams.library_default("bpr"), args.repeats)),
        _median_row(f"shopserve MF (ALS tuned, bm25={tuned.bm25})",
                    _runs(train, test, tuned, args.repeats)),
    ]
    table = format_table(rows)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Recall quality on MovieLens-100K\n\n"
        f"Command: `python -m bench.recall_quality --repeats {args.repeats}"
        f"{' --quick' if args.quick else ''}`\n\n"
        f"Tuned parameters: `{asdict(tuned)}` ({len(tried)} configurations, "
        f"{tune_seconds:.1f}s)\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
