"""Next-item recommendation quality: popularity, tuned ALS, implicit's ItemItem (cosine) and the
SASRec sequence model, on MovieLens-100K and on the generated demo log, in one run.

Protocol (SASRec's and RecBole's leave-one-out): each shopper's items in time order, repeats kept
at their first occurrence; the last item is the test item, the one before it the validation item,
the rest train (shoppers with fewer than 3 items train only). Every model ranks *all* items (no
sampled negatives) with the shopper's earlier items excluded; NDCG@10 (binary gain, log2
discount), HR@10 and MRR (full ranking), from :mod:`training.sequence.evaluate`. Every
hyper-parameter is chosen on the validation item only: ALS over the grid of ``make bench-recall``
(``training.recall.train.DEFAULT_GRID``), ItemItem over its neighbourhood size, the sequence model
over a small grid with early stopping. For the test, popularity, ALS and ItemItem are refitted on
train + validation (they see the validation item as data); the sequence model keeps its
validation-selected weights and gets the validation item as the newest input. All models see the
same unweighted (shopper, item) sequences: MovieLens ratings as implicit feedback, the generated
log's views, carts and purchases with the repeats of an item collapsed.

The generated log (``GeneratorConfig.demo()``, what ``make up`` serves) also gets **anonymous
shoppers**: a seeded fifth of its shoppers with at least 4 items is held out of every training
set; each shows its newest 3 (then up to 10) items before its last, which is the target. A shopper
unknown to MF gets popularity, so the MF row for them *is* popularity; ItemItem scores from the
recent items (it needs no user id), as does the sequence model. Only the recent items are
excluded (all that a session knows). Known shoppers' MF quality is in the table above it.

Training seconds are wall time of the final fit on this machine (tuning not included; its time is
printed): ALS and ItemItem their ``fit``, SASRec every epoch with its validation pass (one torch
thread, the build's default). The load average is printed with them: the machine may be shared.

Run: ``make bench-recommend`` or ``python -m bench.recommend [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import CosineRecommender
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from pipeline.observe.harness import cpu_model
from shopserve.interactions import IdMap
from training.data.generator import GeneratorConfig, generate
from training.data.movielens import load_movielens_100k
from training.recall.train import DEFAULT_GRID, MFParams, fit
from training.sequence.data import (
    HeldOut,
    ItemIndex,
    LeaveOneOut,
    Sequences,
    leave_one_out,
    user_sequences,
)
from training.sequence.evaluate import NextItemMetrics, Scorer, evaluate, popularity_scorer
from training.sequence.train import SequenceConfig, TrainResult, model_scorer, train

RESULTS = Path(__file__).parent / "results" / "recommend.md"

#: The sequence model's search space per data set (every other field from ``base``). Small on
#: purpose: one training is minutes on 2 cores; early stopping picks the epochs.
SEQUENCE_GRIDS: Mapping[str, Mapping[str, Any]] = {
    "MovieLens-100K": {
        "base": SequenceConfig(max_length=50, dim=64, layers=2, heads=2, dropout=0.2,
                               learning_rate=2e-3, weight_decay=0.01, batch_size=64, epochs=40,
                               patience=6, min_epochs=10, progress=False),
        "grid": {"max_length": (50, 200), "weight_decay": (0.01, 1.0)},
    },
    "generated demo log": {
        "base": SequenceConfig(max_length=20, dim=32, layers=2, heads=2, dropout=0.5,
                               learning_rate=5e-3, weight_decay=1.0, batch_size=64, epochs=60,
                               patience=8, min_epochs=10, progress=False),
        "grid": {"weight_decay": (0.1, 1.0), "dim": (32, 64)},
    },
}
QUICK_MF_GRID: Mapping[str, Sequence[Any]] = {
    "factors": (32, 64), "regularization": (0.1, 1.0), "alpha": (1.0, 5.0),
    "bm25": (True, False), "iterations": (15,)}
ITEMITEM_K: tuple[int, ...] = (10, 20, 50, 100, 200, 500)
ANONYMOUS_SHARE = 0.2
RECENT_ITEMS: tuple[int, ...] = (3, 10)


@dataclass(frozen=True)
class Row:
    """One line of a table."""

    name: str
    metrics: NextItemMetrics
    seconds: float


def format_table(rows: Sequence[Row]) -> str:
    """An aligned Markdown table."""
    header = ("model", "NDCG@10", "HR@10", "MRR", "users", "train s")
    lines = [
        "| " + " | ".join(f"{h:<44}" if i == 0 else f"{h:>8}" for i, h in enumerate(header)) + " |",
        "|" + "|".join("-" * 46 if i == 0 else "-" * 10 for i in range(len(header))) + "|",
    ]
    for r in rows:
        m = r.metrics
        lines.append(f"| {r.name:<44} | {m.ndcg_at_10:>8.4f} | {m.hit_rate_at_10:>8.4f} | "
                     f"{m.mrr:>8.4f} | {m.users:>8d} | {r.seconds:>8.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Baselines in the sequence model's index space (columns 0..n, 0 the padding).
# --------------------------------------------------------------------------------------------------


def _csr(rows: Sequences, n_columns: int) -> sp.csr_matrix:
    """Binary rows x items matrix of the rows' items."""
    r = np.repeat(np.arange(len(rows)), rows.lengths())
    matrix = sp.csr_matrix((np.ones(r.shape[0], np.float32), (r, rows.items)),
                           shape=(len(rows), n_columns))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _als_scorer(train: Sequences, held_out: HeldOut, n_items: int, params: MFParams,
                ) -> tuple[Scorer, float]:
    """ALS fitted on ``train`` scoring the held-out rows by their user's factors."""
    items = IdMap(np.arange(1, n_items + 1, dtype=np.int64))
    model = fit(train.to_interactions(), params, items=items, show_progress=False)
    user_rows = model.users.index(held_out.history.users)
    if (user_rows < 0).any():
        raise ValueError("held-out users unknown to ALS")

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.full((rows.shape[0], n_items + 1), -np.inf, np.float32)
        out[:, 1:] = model.user_factors[user_rows[rows]] @ model.item_factors.T
        return out

    return score, model.train_seconds


def tune_als(split: LeaveOneOut, n_items: int, grid: Mapping[str, Sequence[Any]],
             ) -> tuple[MFParams, NextItemMetrics, int]:
    """The grid point with the best validation NDCG@10 (ALS fitted on the training items)."""
    keys = list(grid)
    best: tuple[MFParams, NextItemMetrics] | None = None
    tried = 0
    for values in itertools.product(*(grid[k] for k in keys)):
        params = replace(MFParams(), **dict(zip(keys, values, strict=True)))
        scorer, _ = _als_scorer(split.train, split.valid, n_items, params)
        metrics = evaluate(scorer, split.valid, n_items)
        tried += 1
        if best is None or metrics.ndcg_at_10 > best[1].ndcg_at_10:
            best = (params, metrics)
    assert best is not None
    return best[0], best[1], tried


def _itemitem_scorer(train: Sequences, inputs: Sequences, n_items: int, k: int,
                     ) -> tuple[Scorer, float]:
    """implicit's CosineRecommender fitted on ``train``, scoring from each row of ``inputs``."""
    start = time.perf_counter()
    model = CosineRecommender(K=k)
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # CosineRecommender.fit normalises to a COO matrix and then warns about it itself.
        warnings.simplefilter("ignore", ParameterWarning)
        model.fit(_csr(train, n_items + 1), show_progress=False)
    seconds = time.perf_counter() - start
    history = _csr(inputs, n_items + 1)
    # What ItemItemRecommender.recommend computes per user: the liked rows of the similarity.
    similarity = model.similarity.tocsr()

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.asarray((history[rows] @ similarity).todense(), dtype=np.float32)
        out[:, 0] = -np.inf
        return out

    return score, seconds


def tune_itemitem(split: LeaveOneOut, n_items: int) -> tuple[int, NextItemMetrics]:
    """The neighbourhood size with the best validation NDCG@10."""
    best: tuple[int, NextItemMetrics] | None = None
    for k in ITEMITEM_K:
        scorer, _ = _itemitem_scorer(split.train, split.valid.history, n_items, k)
        metrics = evaluate(scorer, split.valid, n_items)
        if best is None or metrics.ndcg_at_10 > best[1].ndcg_at_10:
            best = (k, metrics)
    assert best is not None
    return best


def tune_sequence(split: LeaveOneOut, n_items: int, base: SequenceConfig,
                  grid: Mapping[str, Sequence[Any]], log: Callable[[str], None],
                  ) -> tuple[TrainResult, list[tuple[dict[str, Any], TrainResult]]]:
    """Train every grid point (early stopping on validation); the best by validation NDCG@10."""
    keys = list(grid)
    tried: list[tuple[dict[str, Any], TrainResult]] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        result = train(split.train, split.valid, n_items, replace(base, **point))
        assert result.best_valid is not None
        log(f"  sequence {point}: valid NDCG@10 {result.best_valid.ndcg_at_10:.4f} "
            f"(epoch {result.best_epoch}, {result.seconds:.0f}s)")
        tried.append((point, result))
    best = max(tried, key=lambda t: t[1].best_valid.ndcg_at_10 if t[1].best_valid else -1.0)
    return best[1], tried


# --------------------------------------------------------------------------------------------------
# The data sets.
# --------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What one data set printed."""

    title: str
    lines: list[str]

    def text(self) -> str:
        return f"## {self.title}\n\n" + "\n".join(self.lines) + "\n"


def _known_and_anonymous(sequences: Sequences, seed: int) -> tuple[Sequences, Sequences]:
    """A seeded :data:`ANONYMOUS_SHARE` of the shoppers with at least 4 items, held out."""
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(sequences.lengths() >= 4)
    anonymous = np.zeros(len(sequences), bool)
    anonymous[rng.choice(eligible, int(round(ANONYMOUS_SHARE * eligible.size)), replace=False)] = True
    return sequences.take(~anonymous), sequences.take(anonymous)


def _recent(anonymous: Sequences, n_recent: int) -> HeldOut:
    """Each anonymous shopper's newest ``n_recent`` items (fewer if that is all) before the last."""
    return HeldOut(anonymous.truncate(1).newest(n_recent), anonymous.last(1))


def run_dataset(
    title: str, sequences: Sequences, n_items: int, *, mf_grid: Mapping[str, Sequence[Any]],
    sequence_grid: Mapping[str, Any], anonymous_seed: int | None, repeats: int,
    log: Callable[[str], None],
) -> Report:
    """Tune and evaluate every model on one data set; print and return its tables."""
    out: list[str] = []

    def say(line: str = "") -> None:
        log(line)
        out.append(line)

    anonymous: Sequences | None = None
    if anonymous_seed is not None:
        sequences, anonymous = _known_and_anonymous(sequences, anonymous_seed)
    split = leave_one_out(sequences)
    say(f"{title}: {len(sequences)} shoppers ({len(split.test)} evaluated), {n_items} items, "
        f"{sequences.items.shape[0]} (shopper, item) pairs"
        + (f"; {len(anonymous)} anonymous shoppers held out of training" if anonymous else ""))

    start = time.perf_counter()
    mf_params, mf_valid, mf_tried = tune_als(split, n_items, mf_grid)
    say(f"ALS tuned on validation: {mf_tried} configurations in {time.perf_counter() - start:.0f}s"
        f" -> {_short_mf(mf_params)} (valid NDCG@10 {mf_valid.ndcg_at_10:.4f})")
    start = time.perf_counter()
    k, ii_valid = tune_itemitem(split, n_items)
    say(f"ItemItem (cosine) tuned on validation: K in {ITEMITEM_K} in "
        f"{time.perf_counter() - start:.0f}s -> K={k} (valid NDCG@10 {ii_valid.ndcg_at_10:.4f})")
    start = time.perf_counter()
    seq, tried = tune_sequence(split, n_items, sequence_grid["base"], sequence_grid["grid"], say)
    assert seq.best_valid is not None
    say(f"sequence model tuned on validation: {len(tried)} configurations "
        f"{dict(sequence_grid['grid'])} in {time.perf_counter() - start:.0f}s -> "
        f"{_short_sequence(seq.config)}, best epoch {seq.best_epoch} "
        f"(valid NDCG@10 {seq.best_valid.ndcg_at_10:.4f})")

    # The test: every seeded model (seed 0 is the tuned one) scored, medians reported.
    models = [seq]
    for seed in range(1, repeats):
        models.append(train(split.train, split.valid, n_items, replace(seq.config, seed=seed)))
    seq_seconds = statistics.median(m.seconds for m in models)
    pop = popularity_scorer(split.before_test, n_items)
    als_runs = [_als_scorer(split.before_test, split.test, n_items, replace(mf_params, seed=seed))
                for seed in range(repeats)]
    itemitem, ii_seconds = _itemitem_scorer(split.before_test, split.test.history, n_items, k)
    rows = [
        Row("popularity", evaluate(pop, split.test, n_items), 0.0),
        Row(f"ALS (tuned, factors={mf_params.factors})",
            _median([evaluate(scorer, split.test, n_items) for scorer, _ in als_runs]),
            statistics.median(seconds for _, seconds in als_runs)),
        Row(f"implicit ItemItem (cosine, K={k})", evaluate(itemitem, split.test, n_items),
            ii_seconds),
        Row(f"SASRec (L={seq.config.max_length}, d={seq.config.dim}, full softmax)",
            _median([evaluate(model_scorer(m.model, split.test), split.test, n_items)
                     for m in models]), seq_seconds),
    ]
    say()
    say(f"Known shoppers, leave-one-out test (ALS and SASRec: medians of {repeats} seeds):")
    say()
    say(format_table(rows))
    _say_gain(say, rows)

    if anonymous is not None:
        for n_recent in RECENT_ITEMS:
            held = _recent(anonymous, n_recent)
            ii, _ = _itemitem_scorer(split.before_test, held.history, n_items, k)
            anon_rows = [
                Row("popularity (= MF: the shopper is unknown)", evaluate(pop, held, n_items), 0.0),
                Row(f"implicit ItemItem (cosine, K={k}) on recent", evaluate(ii, held, n_items),
                    ii_seconds),
                Row("SASRec on recent",
                    _median([evaluate(model_scorer(m.model, held), held, n_items)
                             for m in models]), seq_seconds),
            ]
            say()
            say(f"Anonymous shoppers, their newest {n_recent} items before the target "
                f"(at least 3; {len(held)} shoppers):")
            say()
            say(format_table(anon_rows))
            _say_gain(say, anon_rows)
        say()
        say(f"For reference, MF (tuned ALS) on known shoppers above: NDCG@10 "
            f"{rows[1].metrics.ndcg_at_10:.4f}; an anonymous shopper gets popularity from it.")
    return Report(title, out)


def _median(runs: Sequence[NextItemMetrics]) -> NextItemMetrics:
    """Each metric's median over seeded runs (as ``bench.recall_quality``)."""
    return NextItemMetrics(
        ndcg_at_10=statistics.median(r.ndcg_at_10 for r in runs),
        hit_rate_at_10=statistics.median(r.hit_rate_at_10 for r in runs),
        mrr=statistics.median(r.mrr for r in runs),
        users=runs[0].users,
    )


def _say_gain(say: Callable[[str], None], rows: Sequence[Row]) -> None:
    ours, others = rows[-1], rows[:-1]
    best = max(others, key=lambda r: r.metrics.ndcg_at_10)
    gain = ours.metrics.ndcg_at_10 / best.metrics.ndcg_at_10 - 1.0
    say(f"SASRec NDCG@10 vs the best other ({best.name}): {gain:+.1%}")


def _short_mf(params: MFParams) -> dict[str, Any]:
    return {k: v for k, v in asdict(params).items()
            if k in ("factors", "regularization", "alpha", "bm25", "iterations")}


def _short_sequence(config: SequenceConfig) -> dict[str, Any]:
    return {**config.architecture(), "learning_rate": config.learning_rate,
            "weight_decay": config.weight_decay, "batch_size": config.batch_size,
            "max_epochs": config.epochs, "patience": config.patience,
            "min_epochs": config.min_epochs}


def main(argv: list[str] | None = None) -> None:
    """Print both data sets' tables and write them to bench/results/recommend.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small grids: ALS 16 configurations, the sequence model's first point")
    parser.add_argument("--repeats", type=int, default=3,
                        help="seeds of ALS and of the tuned sequence model (medians reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    header = [f"CPU: {cpu_model()}",
              "load average at the start (1, 5, 15 min): "
              + ", ".join(f"{v:.1f}" for v in os.getloadavg()), ""]
    for line in header:
        log(line)
    mf_grid = QUICK_MF_GRID if args.quick else DEFAULT_GRID

    def grid(title: str) -> Mapping[str, Any]:
        spec = SEQUENCE_GRIDS[title]
        if args.quick:
            return {"base": spec["base"], "grid": {k: v[:1] for k, v in spec["grid"].items()}}
        return spec

    command = (f"python -m bench.recommend --repeats {args.repeats}"
               + (" --quick" if args.quick else ""))
    reports: list[Report] = []

    def write(note: str) -> None:
        # After each data set, so that a run stopped half-way keeps what it measured.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Next-item recommendation quality\n\n"
            f"Command: `{command}` (`make bench-recommend`), {dt.date.today().isoformat()}; "
            f"{note}.\n\n" + "\n".join(header) + "\n"
            + "Protocol: see the docstring of `bench/recommend.py` (leave-one-out by time, full "
              "ranking, earlier items excluded, tuning on the validation item only).\n\n"
            + "\n".join(r.text() for r in reports))

    ml = load_movielens_100k()
    ml_index = ItemIndex.from_ids(ml.item_ids)
    reports.append(run_dataset("MovieLens-100K", user_sequences(ml, ml_index), len(ml_index),
                               mf_grid=mf_grid, sequence_grid=grid("MovieLens-100K"),
                               anonymous_seed=None, repeats=args.repeats, log=log))
    write("unfinished: the generated log is still running")
    log("")
    world = generate(GeneratorConfig.demo())
    demo_index = ItemIndex.from_ids(world.items.item_id)
    reports.append(run_dataset("generated demo log", user_sequences(world.events.log, demo_index),
                               len(demo_index), mf_grid=mf_grid,
                               sequence_grid=grid("generated demo log"), anonymous_seed=0,
                               repeats=args.repeats, log=log))
    total = time.perf_counter() - started
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    log(f"\ntotal {total / 60:.1f} min; load average at the end: {load}")
    write(f"{total / 60:.0f} min, load average at the end {load}")

if __name__ == "__main__":
    main()
