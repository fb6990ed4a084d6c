"""The load test's query stream: a long tail of queries seen once, composed from the catalog's
vocabulary, beside a head drawn from the logged queries by traffic share."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from loadtest.runner import LOCUSTFILE, LoadRun
from loadtest.tail import (
    KINDS,
    NEGATION,
    QUERY_REWRITES_FILE,
    QueryComposer,
    make_typos,
    mined_synonyms,
    size_words,
    typo,
)
from loadtest.traffic import MixConfig, TrafficMix
from shopserve.catalog_files import CatalogFiles
from shopserve.phrasing import NEGATORS, edit_distance, phrase_words
from shopserve.text import tokens
from training.data.generator import QUERY_KINDS, GeneratorConfig, generate

N_REQUESTS = 4000
_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> CatalogFiles:
    """A tiny generated catalog component with a rewrite table like the build's."""
    folder = tmp_path_factory.mktemp("catalog")
    generate(GeneratorConfig.tiny()).save(folder)
    (folder / QUERY_REWRITES_FILE).write_text(json.dumps({"synonyms": {"jumper": "t-shirt",
                                                                       "rouge": "red"}}))
    return CatalogFiles.open(folder)


def _searches(mix: TrafficMix, n: int, *keys: int) -> list[str]:
    stream = mix.stream(7, *keys)
    return [c.query for c in (stream.next() for _ in range(n)) if c.kind == "search"]


def _once_share(queries: list[str]) -> float:
    counts = Counter(queries)
    return sum(1 for q in queries if counts[q] == 1) / len(queries)


def _damerau1(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` or one deletion, insertion, substitution or swap away."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


@pytest.mark.parametrize("tail_share", [0.0, 0.2, 0.4, 0.7])
def test_share_of_queries_seen_once_meets_the_setting(catalog: CatalogFiles, tail_share: float) -> None:
    mix = TrafficMix.from_files(catalog, MixConfig(tail_share=tail_share))
    queries = _searches(mix, N_REQUESTS)
    # Binomial sampling of the tail draws: 3 standard deviations of ~3,200 searches.
    tolerance = 3 * (tail_share * (1 - tail_share) / len(queries)) ** 0.5
    assert _once_share(queries) >= tail_share - tolerance


def test_default_gives_a_third_seen_once_across_worker_processes(catalog: CatalogFiles) -> None:
    assert MixConfig().tail_share >= 1 / 3
    mix = TrafficMix.from_files(catalog)
    # Two worker processes' streams in one run, on a 500-item catalog (the smallest vocabulary).
    queries = _searches(mix, N_REQUESTS // 2, 0) + _searches(mix, N_REQUESTS // 2, 1)
    assert _once_share(queries) >= 1 / 3


def test_composed_queries_are_new_to_their_stream_and_the_log(catalog: CatalogFiles) -> None:
    mix = TrafficMix.from_files(catalog, MixConfig(tail_share=1.0, recommend_share=0.0))
    stream = mix.stream(3)
    calls = [stream.next() for _ in range(1500)]
    composed = [c.query for c in calls if c.composed]
    assert len(composed) == len(calls)
    assert len(set(composed)) == len(composed)  # one stream never repeats itself
    assert not set(composed) & set(catalog.queries["text"].tolist())


def test_composed_queries_use_only_the_catalog_vocabulary(catalog: CatalogFiles) -> None:
    composer = QueryComposer.from_files(catalog)
    catalog_words = set()
    for text in catalog.item_text().tolist():
        catalog_words.update(_WORD.findall(text.lower()))
    # Every word the composer names comes from the items (titles and attributes) ...
    assert composer.lexicon() <= catalog_words
    # ... and every synonym from what shoppers typed in the log or the mined rewrite table, every
    # other word from the phrase tables the generator wrote the log's harder classes with.
    typed = set()
    for text in catalog.queries["text"].tolist():
        typed.update(text.split())
    assert composer.vocabulary() - composer.lexicon() - phrase_words() <= typed | {"jumper", "rouge"}



def test_rewrite_table_read_backwards_only_where_the_log_taught_nothing(catalog: CatalogFiles) -> None:
    composer = QueryComposer.from_files(catalog)
    bare = sorted(m for m in set(composer.material) if m.isalpha() and m not in composer.synonyms)[0]
    taught = next(w for w, phrases in composer.synonyms.items()
                  if w in composer.lexicon() and any(" " not in p for p in phrases))
    composer.add_rewrites({"hidey": bare, "zzz": taught, "qqq": "one"})
    assert "hidey" in composer.synonyms[bare]
    assert "zzz" not in composer.synonyms[taught]  # the log's own synonyms win
    assert "qqq" not in composer.synonyms.get("one", [])  # a fragment of "one size"


def test_composed_queries_follow_their_kind(catalog: CatalogFiles) -> None:
    composer = QueryComposer.from_files(catalog)
    items = catalog.items

    assert KINDS == QUERY_KINDS  # the generator's kinds, which the load test may not import
    assert all(composer.kind_shares[k] > 0 for k in KINDS)  # the log has every kind
    rng, seen = random.Random(0), set()
    queries = [composer.compose(rng, seen) for _ in range(3000)]
    kinds = Counter(q.kind for q in queries)
    assert set(kinds) == set(KINDS)
    vocabulary = composer.vocabulary()
    categories = set(items["category"].tolist())
    for q in queries:
        assert q.category in categories
        base_words = q.base_text.split()
        noun = composer.nouns[q.category]
        if q.kind == NEGATION:
            wanted, excluded = q.base_text.rsplit(" not ", 1)
            assert q.text.startswith(wanted + " ") and q.text.endswith(" " + excluded)
            assert any(f" {n} " in q.text.replace("aren't", "isn't") for n in NEGATORS["colour"]
                       + NEGATORS["material"])  # fmt: skip
            base_words = wanted.split()
            assert excluded in set(composer.colour) | set(composer.material)
        assert set(base_words) <= composer.lexicon()
        assert noun in q.base_text  # a query names its category
        if q.kind != NEGATION:
            assert len(base_words) > len(noun.split())  # an attribute too
        words = q.text.split()
        if q.kind == "exact":
            assert q.text == q.base_text
        elif q.kind in ("synonym", "paraphrase", NEGATION):
            assert set(words) <= vocabulary
        elif q.kind == "described":
            assert set(words) <= vocabulary
            assert not set(tokens(q.text)) & set(tokens(noun)), q.text
        elif q.kind == "misspelling":
            assert len(words) == len(base_words)
            assert max(edit_distance(b, w) for b, w in zip(base_words, words, strict=True)) >= 2
        else:
            assert len(words) == len(base_words)
            edited = [(b, w) for b, w in zip(base_words, words, strict=True) if b != w]
            assert 1 <= len(edited) <= 2
            assert all(_damerau1(b, w) and b[0] == w[0] for b, w in edited)


@pytest.mark.parametrize(("shares", "expected"), [
    ({}, {"exact"}),
    ({"exact": 0.5, "synonym": 0.3, "typo": 0.2}, {"exact", "synonym", "typo"}),
    ({"negation": 1.0}, {"negation"}),
])
def test_a_composer_writes_only_the_kinds_it_has_shares_for(
    catalog: CatalogFiles, shares: dict[str, float], expected: set[str]
) -> None:
    composer = QueryComposer(catalog.items, {}, shares)
    rng = random.Random(2)
    assert {composer.compose(rng).kind for _ in range(300)} == expected


def test_head_queries_follow_traffic_shares(catalog: CatalogFiles) -> None:
    mix = TrafficMix.from_files(catalog, MixConfig(tail_share=0.4, recommend_share=0.0))
    stream = mix.stream(11)
    head = [c.query for c in (stream.next() for _ in range(8000)) if not c.composed]
    assert len(head) == pytest.approx(0.6 * 8000, rel=0.05)
    q = catalog.queries
    shares = q["frequency"].astype(np.float64) / q["frequency"].sum()
    counts = Counter(head)
    for row in np.argsort(-shares)[:5].tolist():
        expected = shares[row]
        sigma = (expected * (1 - expected) / len(head)) ** 0.5
        assert counts[q["text"][row]] / len(head) == pytest.approx(expected, abs=4 * sigma)


def test_streams_are_seeded(catalog: CatalogFiles) -> None:
    mix = TrafficMix.from_files(catalog)

    def bodies(*keys: int | str) -> list:
        stream = mix.stream(*keys)
        return [stream.next().body for _ in range(300)]

    assert bodies(5, 0) == bodies(5, 0)
    assert bodies(5, 0) != bodies(5, 1)
    assert bodies(5, 0) != bodies(6, 0)


def test_a_mix_of_bare_lists_has_no_tail() -> None:
    mix = TrafficMix(["a", "b"], [1.0, 1.0], ["c", "c"], [1], [1.0], {"c": 10.0},
                     MixConfig(tail_share=0.9))
    assert mix.tail_share == 0.0
    stream = mix.stream(0)
    assert {stream.next().query for _ in range(200)} <= {"a", "b", ""}


def test_tail_share_is_checked() -> None:
    with pytest.raises(ValueError, match="tail_share"):
        MixConfig(tail_share=1.5)


@pytest.mark.parametrize(
    ("base", "text", "expected"),
    [
        ("navy leather jacket", "dark blue leather parka", {"navy": {"dark blue"}, "jacket": {"parka"}}),
        ("red phone case", "scarlet mobile cover", {"red phone case": {"scarlet mobile cover"}}),
        ("bergen backpack", "bergen rucksack", {"backpack": {"rucksack"}}),
        ("white mug", "white mug", {}),
    ],
)
def test_mined_synonyms(base: str, text: str, expected: dict[str, set[str]]) -> None:
    assert mined_synonyms([base], [text]) == expected


def test_typos_keep_the_first_letter_and_are_one_edit() -> None:
    rng = random.Random(0)
    for word in ["jacket", "backpack", "leather", "mug", "sofa"] * 40:
        out = typo(word, rng)
        assert out != word and out[0] == word[0] and _damerau1(word, out)
    assert make_typos("ab", random.Random(0)) == "abb"
    assert size_words("L") == "size l" and size_words("42") == "size 42"
    assert size_words("iPhone 15 Pro") == "iphone 15 pro"


def test_load_run_passes_tail_share_and_seed() -> None:
    cmd = LoadRun(host="http://x", out_dir=Path("out"), tail_share=0.5, seed=3).command()
    assert cmd[cmd.index("--tail-share") + 1] == "0.5" and cmd[cmd.index("--seed") + 1] == "3"
    assert "--tail-share" not in LoadRun(host="http://x", out_dir=Path("out")).command()


def test_locustfile_takes_the_tail_share_flag(catalog: CatalogFiles, tmp_path: Path) -> None:
    # In a child process: importing locust monkey-patches this one with gevent. An out-of-range
    # share must stop locust at start, which shows that the flag reaches the mix.
    (tmp_path / "catalog").symlink_to(catalog.folder, target_is_directory=True)
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-t", "1s",
         "--host", "http://127.0.0.1:9", "--bundle", str(tmp_path), "--tail-share", "1.5",
         "--seed", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode != 0
    assert "tail_share must be in [0, 1]" in run.stderr + run.stdout


def test_locust_users_send_the_seeded_stream(catalog: CatalogFiles, tmp_path: Path) -> None:
    # Nothing listens on the port: every request fails, but each one was drawn from the stream.
    (tmp_path / "catalog").symlink_to(catalog.folder, target_is_directory=True)
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2",
         "-t", "2s", "--host", "http://127.0.0.1:9", "--bundle", str(tmp_path),
         "--tail-share", "0.5", "--seed", "4", "--rate-per-user", "20",
         "--summary-json", str(summary)],
        capture_output=True, text=True, timeout=120,
    )
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert json.loads(summary.read_text())["total"]["requests"] > 0
