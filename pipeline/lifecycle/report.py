"""``shopserve evaluate``: offline evaluation of a run, written as ``report.md`` plus PNG plots.

Everything is computed offline from the run folder, no server needed:

* **Recall** (MF against the popularity baseline): each user's latest interactions held out
  (``recall.holdout_fraction``), the model re-fitted on the rest with the packaged
  hyper-parameters, top 50 ranked with training items excluded. Binary gains; Recall@K divides by
  ``min(|held out|, K)`` and NDCG@K uses the log2 discount: ``shopserve.metrics.held_out_metrics``,
  the bulk path ``training.recall.train`` uses too.
  Both models rank the same item index, so the baseline is scored on exactly the same users.
* **Ranking** (BM25 against the ranker's ONNX variants): the held-out candidate lists of the ranker
  build, each list reranked; graded NDCG@K (gain ``2**grade - 1``, log2 discount) and Recall@K of
  the relevant items (grade > 0), from ``shopserve.metrics``.
* **Per query class**: NDCG@10 by query kind (exact, synonym, typo) and head or tail query
  (``queries.is_head``: the most frequent share of queries).
* **Score distributions**: the packaged variant's scores by relevance grade.
* **Quality against latency**: NDCG@10 and median ms per request of each variant (the optimise
  step's own measurements on this machine).
* **Sequence recommender** (when the run has one): NDCG@10, HR@10 and MRR of the next-item model on
  each evaluated shopper's last item (full ranking over the catalog, the shopper's earlier items
  excluded, binary gain, log2 discount) against the popularity baseline on the same shoppers and
  the previous release's model, read from the model's record: the run's ``sequence-train/`` export
  (``result.json``), else this run's packaged ``sequence`` component (``manifest.json``). A run
  without one says so, and its release serves recommendations from MF and popularity.

The report opens with the release's key numbers against the previous bundle's (the registry's
newest, which the package step records as the parent).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.lifecycle.registry import format_change
from shopserve.artifacts import MANIFEST, SEQUENCE_COMPONENT, Manifest, read_manifest
from shopserve.release import HIT_RATE_AT_10, MRR, NDCG_AT_10, POPULARITY_PREFIX, ReleaseMetrics

if TYPE_CHECKING:
    from pipeline.lifecycle.layout import StepContext
    from training.ranker.pairs import CandidateList

REPORT = "report.md"
PLOTS = {
    "recall_curves": "recall_curves.png",
    "ranking_curves": "ranking_curves.png",
    "quality_latency": "quality_latency.png",
    "score_distributions": "score_distributions.png",
    "query_classes": "query_classes.png",
}
#: Written only when the run has a sequence model (not in :data:`PLOTS`, which every report has).
SEQUENCE_PLOT = "sequence.png"
GRADE_NAMES = {0: "irrelevant", 1: "complement", 2: "substitute", 3: "exact"}
#: The sequence model's metrics the report shows, with their labels, in order.
SEQUENCE_METRICS = {NDCG_AT_10: "NDCG@10", HIT_RATE_AT_10: "HR@10", MRR: "MRR"}
#: Its parameters the report quotes.
SEQUENCE_PARAMS = ("sequence_length", "top_k", "dim", "layers", "heads", "n_items", "epochs",
                   "best_epoch", "objective")


# --------------------------------------------------------------------------------------------------
# Recall curves
# --------------------------------------------------------------------------------------------------


def topk_curves(
    score_blocks: Sequence[tuple[np.ndarray, np.ndarray]],
    train: Any,
    test: Any,
    ks: Sequence[int],
) -> dict[str, list[float]]:
    """Mean Recall@K and NDCG@K (binary gains) for every K, training items excluded.

    Args:
        score_blocks: ``(user_rows, scores [len(user_rows), n_items])`` blocks.
        train: users x items CSR of training interactions (excluded from the ranking).
        test: users x items CSR of held-out interactions.
        ks: Cut-offs, ascending.

    Returns:
        ``{"recall": [...], "ndcg": [...], "users": [n]}``, one value per K.
    """
    from shopserve.metrics import held_out_metrics

    result = held_out_metrics(score_blocks, train, test, ks)
    order = [result.ks.index(k) for k in ks]
    return {"recall": [result.recall[i] for i in order], "ndcg": [result.ndcg[i] for i in order],
            "users": [result.users]}


def recall_curves(ctx: StepContext, ks: Sequence[int]) -> dict[str, dict[str, list[float]]]:
    """Recall@K and NDCG@K of the MF model and the popularity baseline on held-out interactions."""
    from pipeline.lifecycle.layout import RECALL_DIR
    from shopserve.artifacts import read_manifest
    from shopserve.interactions import temporal_split
    from training.recall.train import MFParams, fit, to_csr

    manifest = read_manifest(ctx.path(RECALL_DIR))
    params = MFParams(**manifest.params["mf"])
    dataset = ctx.dataset()
    train, test = temporal_split(dataset.events.log, manifest.params.get("holdout_fraction", 0.2))
    model = fit(train, params, items=dataset.item_map, show_progress=False)
    train_m = to_csr(train, model.users, model.items)
    test_m = to_csr(test, model.users, model.items)
    users = np.flatnonzero(np.diff(test_m.indptr))
    blocks = [users[i: i + 512] for i in range(0, users.size, 512)]
    popularity = np.asarray((train_m > 0).sum(axis=0)).ravel().astype(np.float32)
    return {
        "mf": topk_curves([(b, model.user_factors[b] @ model.item_factors.T) for b in blocks],
                          train_m, test_m, ks),
        "popularity": topk_curves([(b, np.broadcast_to(popularity, (b.size, popularity.size)))
                                   for b in blocks], train_m, test_m, ks),
    }


# --------------------------------------------------------------------------------------------------
# Ranking curves, classes, score distributions
# --------------------------------------------------------------------------------------------------


def _ranking_metrics(
    lists: Sequence[CandidateList], scores: Sequence[np.ndarray], ks: Sequence[int],
    head: Mapping[int, bool],
) -> dict[str, Any]:
    from shopserve.metrics import mean_metric, ndcg_at_k, recall_at_k

    rankings = [c.item_ids[np.argsort(-s, kind="stable")] for c, s in zip(lists, scores, strict=True)]
    graded = [c.relevance() for c in lists]
    out: dict[str, Any] = {
        "ndcg": [mean_metric(ndcg_at_k, rankings, graded, k) for k in ks],
        "recall": [mean_metric(recall_at_k, rankings, graded, k) for k in ks],
    }
    classes: dict[str, float] = {}
    groups: dict[str, list[int]] = {}
    for i, cands in enumerate(lists):
        groups.setdefault(cands.query.kind, []).append(i)
        groups.setdefault("head" if head.get(cands.query.key, False) else "tail", []).append(i)
    for name, idx in groups.items():
        classes[name] = mean_metric(ndcg_at_k, [rankings[i] for i in idx], [graded[i] for i in idx], 10)
    out["classes"] = classes
    out["class_queries"] = {name: len(idx) for name, idx in groups.items()}
    return out


def ranking_evaluation(
    ctx: StepContext, ks: Sequence[int], progress: bool
) -> tuple[dict[str, Any], str, dict[str, list[float]]]:
    """Ranking curves and per-class NDCG for BM25 and every ONNX variant, plus score samples.

    Returns:
        (metrics by model name, the variant the guard packages, its scores by grade name).
    """
    from tqdm import tqdm

    from pipeline.lifecycle.layout import load_optimised
    from training.ranker.build import prepare_data
    from training.ranker.evaluate import Bm25Scorer, cross_encoder_scorer
    from training.ranker.optimise import OrtScorer, select_variant

    config = ctx.config.ranker(progress=False)
    dataset = ctx.dataset()
    prepared = prepare_data(dataset, config)
    lists = prepared.eval_lists
    result = load_optimised(ctx)
    chosen = select_variant(result.variants, result.reference_ndcg, config.max_ndcg_drop)
    head = {int(q): bool(h) for q, h in zip(dataset.queries.query_id.tolist(),
                                             dataset.queries.is_head.tolist(), strict=True)}
    scorers: dict[str, Callable[[CandidateList], np.ndarray]] = {
        "bm25": Bm25Scorer(prepared.catalog.item_ids, prepared.catalog.titles),
    }
    for variant in result.variants:
        scorers[variant.name] = cross_encoder_scorer(
            prepared.tokenizer, OrtScorer(variant.path, config.threads), prepared.max_length)
    metrics: dict[str, Any] = {}
    by_grade: dict[str, list[float]] = {}
    bar = tqdm(total=len(scorers) * len(lists), desc="evaluate rankers", unit="query",
               disable=not progress)
    for name, scorer in scorers.items():
        scores = []
        for cands in lists:
            scores.append(np.asarray(scorer(cands), dtype=np.float64).reshape(-1))
            bar.update(1)
        metrics[name] = _ranking_metrics(lists, scores, ks, head)
        if name == chosen.name:
            for cands, s in zip(lists, scores, strict=True):
                for grade, value in zip(cands.grades.tolist(), s.tolist(), strict=True):
                    by_grade.setdefault(GRADE_NAMES.get(int(grade), str(grade)), []).append(value)
    bar.close()
    return metrics, chosen.name, by_grade


# --------------------------------------------------------------------------------------------------
# Sequence recommender
# --------------------------------------------------------------------------------------------------


def read_sequence_record(folder: Path) -> Manifest | None:
    """The sequence model's record in ``folder``, or None when there is none.

    A packaged component (a bundle's ``sequence/``) has its ``manifest.json``; the run's export
    (``sequence-train/``) has ``result.json`` with the same ``params``, ``metrics`` and ``data``,
    read as an unpackaged manifest.

    Raises:
        BundleError: a ``manifest.json`` that cannot be read.
    """
    from pipeline.lifecycle.layout import RESULT_FILE, UNPACKAGED

    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return read_manifest(folder)
    if (folder / RESULT_FILE).is_file():
        raw = json.loads((folder / RESULT_FILE).read_text())
        return Manifest(SEQUENCE_COMPONENT, UNPACKAGED, "", {}, data=dict(raw.get("data") or {}),
                        params=dict(raw.get("params") or {}), metrics=dict(raw.get("metrics") or {}))
    return None


def sequence_record(ctx: StepContext) -> Manifest | None:
    """The run's sequence model: its ``sequence-train/`` export, else the ``sequence`` component of
    the bundle this run packaged; None when the run has neither."""
    from pipeline.lifecycle.layout import SEQUENCE_TRAIN_DIR

    folders = [ctx.path(SEQUENCE_TRAIN_DIR)]
    own = (ctx.state.get("package") or {}).get("output")
    if own:
        folders.append(Path(own) / SEQUENCE_COMPONENT)
    for folder in folders:
        record = read_sequence_record(folder)
        if record is not None:
            return record
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def sequence_evaluation(record: Manifest | None) -> dict[str, Any] | None:
    """What the report shows of the sequence model (JSON-ready), None without one.

    Returns:
        ``{"model": {metric: value}, "popularity": {metric: value}, "users", "valid_ndcg_at_10",
        "train_seconds", "params": {...}, "version"}``, metrics keyed as :data:`SEQUENCE_METRICS`
        (a metric the record lacks is None).
    """
    if record is None:
        return None
    metrics = record.metrics
    return {
        "model": {m: _number(metrics.get(m)) for m in SEQUENCE_METRICS},
        "popularity": {m: _number(metrics.get(POPULARITY_PREFIX + m)) for m in SEQUENCE_METRICS},
        "users": metrics.get("users"),
        "valid_ndcg_at_10": _number(metrics.get(f"valid_{NDCG_AT_10}")),
        "train_seconds": _number(metrics.get("train_seconds")),
        "params": {k: record.params[k] for k in SEQUENCE_PARAMS if k in record.params},
        "version": record.version,
    }


def previous_sequence(previous: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """The previous release's sequence metrics from its key numbers, None when it had no model."""
    release = ReleaseMetrics.from_key_metrics(previous or {})
    values = {NDCG_AT_10: release.sequence_ndcg_at_10, HIT_RATE_AT_10: release.sequence_hit_rate_at_10,
              MRR: release.sequence_mrr}
    return values if any(v is not None for v in values.values()) else None


def current_key_metrics(ctx: StepContext, chosen: str) -> dict[str, Any]:
    """The key numbers of the release being built, keyed as ``pipeline.lifecycle.registry.key_metrics``.

    Recall's come from its manifest in the run folder, the ranker's from the optimise step's
    evaluation rows (the ranker component is written only when packaging), the sequence model's
    from its record (:func:`sequence_record`; none without one).
    """
    from pipeline.lifecycle.layout import RANKER_OPTIMISE_DIR, RECALL_DIR, RESULT_FILE

    raw = json.loads((ctx.path(RANKER_OPTIMISE_DIR) / RESULT_FILE).read_text())
    rows = {r["name"]: r for r in raw["rows"]}
    variant = next(v for v in raw["variants"] if v["name"] == chosen)
    summary = ctx.dataset().summary()
    release = replace(
        ReleaseMetrics.from_manifests(recall=read_manifest(ctx.path(RECALL_DIR)),
                                      sequence=sequence_record(ctx)),
        ranker_variant=chosen,
        ranker_layers=variant["layers"],
        ranker_ndcg_at_10=variant["ndcg"],
        ranker_reference_ndcg_at_10=rows["torch-fp32"]["report"]["ndcg"],
        ranker_ms_p50=variant["ms_per_request"],
        ranker_bm25_ndcg_at_10=rows["bm25"]["report"]["ndcg"],
        catalog_items=summary["items"],
        catalog_queries=summary["queries"]["total"],
    )
    return release.key_metrics()


def evaluate_offline(ctx: StepContext, previous: Path | None) -> dict[str, Any]:
    """Every number the report shows, JSON-ready (``evaluation.json``).

    Args:
        ctx: The step context (run folder with data, recall and the optimised ranker).
        previous: The previous bundle's folder, whose key numbers the report compares against.
    """
    from pipeline.lifecycle.layout import RANKER_OPTIMISE_DIR, RESULT_FILE
    from pipeline.lifecycle.registry import key_metrics

    ks = list(ctx.config.ks())
    ranking, chosen, by_grade = ranking_evaluation(ctx, ks, ctx.progress)
    raw = json.loads((ctx.path(RANKER_OPTIMISE_DIR) / RESULT_FILE).read_text())
    variants = [
        {"name": r["name"], NDCG_AT_10: r["report"]["ndcg"], "ms_p50": r.get("ms_p50"),
         "size_mib": r.get("size_mib"), "layers": r.get("layers")}
        for r in raw["rows"]
    ]
    return {
        "config": ctx.config.name,
        "ks": ks,
        "key_metrics": current_key_metrics(ctx, chosen),
        "previous": key_metrics(previous) if previous is not None else None,
        "previous_path": str(previous) if previous is not None else None,
        "recall": recall_curves(ctx, ks),
        "ranking": ranking,
        "chosen": chosen,
        "variants": variants,
        "scores_by_grade": by_grade,
        "sequence": sequence_evaluation(sequence_record(ctx)),
    }


# --------------------------------------------------------------------------------------------------
# Writing: plots and markdown
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")  # files only: never a display, also on a desktop
    import matplotlib.pyplot as plt

    return plt


def _curves_plot(path: Path, title: str, ks: Sequence[int], models: Mapping[str, Mapping[str, Any]]) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "ndcg", "NDCG@K"), (axes[1], "recall", "Recall@K")):
        for name, values in models.items():
            style = "--" if name in ("popularity", "bm25") else "-"
            ax.plot(ks, values[metric], style, marker="o", markersize=3, label=name)
        ax.set_xlabel("K")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _quality_latency_plot(path: Path, variants: Sequence[Mapping[str, Any]], chosen: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        if v.get("ms_p50") is None:
            ax.axhline(v[NDCG_AT_10], linestyle=":", color="grey")
            ax.annotate(v["name"], (0, v[NDCG_AT_10]), xycoords=("axes fraction", "data"),
                        fontsize=8, color="grey", xytext=(4, 3), textcoords="offset points")
            continue
        marker = "*" if v["name"] == chosen else "o"
        ax.scatter(v["ms_p50"], v[NDCG_AT_10], s=140 if marker == "*" else 45, marker=marker)
        ax.annotate(f"{v['name']} ({v.get('layers') or '?'}L)", (v["ms_p50"], v[NDCG_AT_10]),
                    fontsize=8, xytext=(5, 4), textcoords="offset points")
    ax.set_xlabel("ms per request (p50, one candidate list)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"Ranker variants: quality against latency (packaged: {chosen})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _score_plot(path: Path, by_grade: Mapping[str, Sequence[float]], chosen: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    values = [v for vs in by_grade.values() for v in vs]
    bins = np.linspace(min(values), max(values), 40) if values else 10
    for grade in ("irrelevant", "complement", "substitute", "exact"):
        if by_grade.get(grade):
            ax.hist(by_grade[grade], bins=bins, alpha=0.5, density=True,
                    label=f"{grade} ({len(by_grade[grade])})")
    ax.set_xlabel(f"{chosen} score")
    ax.set_ylabel("density")
    ax.set_title("Ranker scores by relevance grade (held-out candidate lists)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _classes_plot(path: Path, ranking: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(ranking), 1)
    x = np.arange(len(classes))
    for i, (name, values) in enumerate(ranking.items()):
        heights = [values["classes"].get(c, float("nan")) for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, heights, width, label=name)
    ax.set_xticks(x, classes)
    ax.set_ylabel("NDCG@10")
    ax.set_ylim(0, 1.02)
    ax.set_title("NDCG@10 by query class")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sequence_plot(path: Path, sequence: Mapping[str, Any],
                   previous: Mapping[str, float | None] | None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups: dict[str, Mapping[str, Any]] = {"sequence model": sequence["model"],
                                            "popularity": sequence["popularity"]}
    if previous is not None:
        groups["previous release"] = previous
    width = 0.8 / len(groups)
    x = np.arange(len(SEQUENCE_METRICS))
    for i, (name, values) in enumerate(groups.items()):
        heights = [float("nan") if values.get(m) is None else float(values[m]) for m in SEQUENCE_METRICS]
        bars = ax.bar(x + i * width - 0.4 + width / 2, heights, width, label=name,
                      hatch="//" if name == "popularity" else None)
        ax.bar_label(bars, labels=["" if math.isnan(h) else f"{h:.3f}" for h in heights], fontsize=7,
                     padding=2)
    ax.set_xticks(x, list(SEQUENCE_METRICS.values()))
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("mean over evaluated shoppers")
    ax.set_title(f"Sequence recommender: next item ({sequence.get('users') or '?'} shoppers, full ranking)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _change(now: Any, before: Any) -> str:
    if isinstance(now, int | float) and isinstance(before, int | float) and not isinstance(now, bool):
        return format_change(now - before, before)
    return "=" if now == before else "changed"


#: Row labels of the report's opening table, by key in ``bundle.json``'s key metrics
#: (:data:`shopserve.release.KEY_METRICS`), in the order shown.
KEY_LABELS = {
    "ranker.ndcg_at_10": "Ranker NDCG@10 (packaged variant)",
    "ranker.reference_ndcg_at_10": "Ranker NDCG@10 (fp32 6 layers)",
    "ranker.bm25_ndcg_at_10": "BM25 NDCG@10 (same lists)",
    "ranker.ms_p50": "Ranker ms per request (p50)",
    "ranker.variant": "Ranker variant",
    "ranker.layers": "Ranker layers",
    "recall.ndcg_at_10": "Recall MF NDCG@10",
    "recall.recall_at_20": "Recall MF Recall@20",
    "recall.popularity_ndcg_at_10": "Popularity NDCG@10",
    "sequence.ndcg_at_10": "Sequence model NDCG@10 (next item)",
    "sequence.hit_rate_at_10": "Sequence model HR@10",
    "sequence.mrr": "Sequence model MRR",
    "sequence.popularity_ndcg_at_10": "Popularity NDCG@10 (next item)",
    "catalog.items": "Catalog items",
    "catalog.queries": "Queries",
}


def write_report(evaluation: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``report.md``, the PNG plots and ``evaluation.json`` into ``out``; the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ks = evaluation["ks"]
    ranking = evaluation["ranking"]
    chosen = evaluation["chosen"]
    _curves_plot(out / PLOTS["recall_curves"], "Recall: MF against popularity (held-out interactions)",
                 ks, evaluation["recall"])
    _curves_plot(out / PLOTS["ranking_curves"], "Ranking: BM25 against ranker variants (held-out queries)",
                 ks, ranking)
    _quality_latency_plot(out / PLOTS["quality_latency"], evaluation["variants"], chosen)
    _score_plot(out / PLOTS["score_distributions"], evaluation["scores_by_grade"], chosen)
    kinds = sorted({c for m in ranking.values() for c in m["classes"]} - {"head", "tail"})
    classes = [*kinds, "head", "tail"]
    _classes_plot(out / PLOTS["query_classes"], ranking, classes)

    key, previous = evaluation["key_metrics"], evaluation.get("previous") or {}
    parent = evaluation.get("parent")
    lines = [f"# Release report ({evaluation['config']} configuration)", ""]
    lines += [f"Previous bundle: `{parent}`." if parent else "No previous bundle: first release.", ""]
    lines += ["| key number | this release | previous | change |", "|---|---:|---:|---|"]
    for name, label in KEY_LABELS.items():
        if name in key:
            before = previous.get(name)
            lines.append(f"| {label} | {_fmt(key[name])} | {_fmt(before)} | "
                         f"{_change(key[name], before) if parent and before is not None else '-'} |")
    lines += ["", "## Recall (MF against popularity)", "",
              f"![recall curves]({PLOTS['recall_curves']})", "",
              "| model | " + " | ".join(f"NDCG@{k}" for k in ks) + " | "
              + " | ".join(f"Recall@{k}" for k in ks) + " |",
              "|---|" + "---:|" * (2 * len(ks))]
    for name, values in evaluation["recall"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in values["ndcg"]) + " | "
                     + " | ".join(_fmt(v) for v in values["recall"]) + " |")
    users = next(iter(evaluation["recall"].values()))["users"][0]
    lines += ["", f"{users} users with held-out interactions; binary gains, log2 discount; "
              "Recall@K divides by min(held out, K).", "",
              "## Ranking (BM25 against the ranker variants)", "",
              f"![ranking curves]({PLOTS['ranking_curves']})", "",
              "| model | " + " | ".join(f"NDCG@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for name, values in ranking.items():
        mark = " (packaged)" if name == chosen else ""
        lines.append(f"| {name}{mark} | " + " | ".join(_fmt(v) for v in values["ndcg"]) + " |")
    lines += ["", "Graded NDCG (gain 2^grade - 1, log2 discount) over the held-out candidate lists "
              "of the ranker build.", "",
              "## Quality against latency", "", f"![quality against latency]({PLOTS['quality_latency']})",
              "", "| variant | layers | NDCG@10 | ms/request p50 | MiB |", "|---|---:|---:|---:|---:|"]
    for v in evaluation["variants"]:
        lines.append(f"| {v['name']} | {_fmt(v.get('layers'))} | {_fmt(v[NDCG_AT_10])} | "
                     f"{_fmt(v.get('ms_p50'))} | {_fmt(v.get('size_mib'))} |")
    lines += ["", "## Score distributions", "", f"![score distributions]({PLOTS['score_distributions']})",
              "", "| grade | pairs | mean score |", "|---|---:|---:|"]
    for grade in ("exact", "substitute", "complement", "irrelevant"):
        values = evaluation["scores_by_grade"].get(grade) or []
        if values:
            lines.append(f"| {grade} | {len(values)} | {_fmt(float(np.mean(values)))} |")
    counts = next(iter(ranking.values()))["class_queries"]
    lines += ["", "## Per query class (NDCG@10)", "", f"![query classes]({PLOTS['query_classes']})", "",
              "| model | " + " | ".join(f"{c} ({counts.get(c, 0)})" for c in classes) + " |",
              "|---|" + "---:|" * len(classes)]
    for name, values in ranking.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values["classes"].get(c)) for c in classes) + " |")
    lines += ["", "Synonym queries share no word with the exact titles; typo queries misspell one word; "
              "head queries are the most frequent share of the query traffic, tail the rest.", ""]
    written = [out / REPORT, *(out / p for p in PLOTS.values())]
    lines += ["## Sequence recommender (next item)", ""]
    sequence = evaluation.get("sequence")
    if sequence:
        previous_model = previous_sequence(previous) if parent else None
        _sequence_plot(out / SEQUENCE_PLOT, sequence, previous_model)
        written.append(out / SEQUENCE_PLOT)
        rows = {"sequence model": sequence["model"], "popularity": sequence["popularity"]}
        if previous_model is not None:
            rows[f"previous release ({parent})"] = previous_model
        lines += [f"![sequence recommender]({SEQUENCE_PLOT})", "",
                  "| model | " + " | ".join(SEQUENCE_METRICS.values()) + " |",
                  "|---|" + "---:|" * len(SEQUENCE_METRICS)]
        for name, values in rows.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(values.get(m)) for m in SEQUENCE_METRICS) + " |")
        params = sequence.get("params") or {}
        described = ", ".join(f"{k} {v}" for k, v in params.items())
        seconds = sequence.get("train_seconds")
        trained = f"; trained in {seconds:.1f} s" if seconds is not None else ""
        lines += ["", f"{_fmt(sequence.get('users'))} shoppers, each evaluated on their last item "
                  "(the one before it validates, the rest trains); full ranking over the catalog with "
                  "the shopper's earlier items excluded; binary gain, log2 discount. Validation "
                  f"NDCG@10 {_fmt(sequence.get('valid_ndcg_at_10'))}{trained}.", ""]
        if described:
            lines += [f"Model: {described}.", ""]
    else:
        lines += ["This run has no sequence model: its release serves recommendations from MF and "
                  "popularity (`sequence.enabled: false` in the chart).", ""]
    (out / REPORT).write_text("\n".join(lines))
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=float) + "\n")
    return [*written, out / "evaluation.json"]
