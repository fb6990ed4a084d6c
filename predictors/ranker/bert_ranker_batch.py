"""Request checks and grouped scoring shared by ``bert-ranker``'s two Python runtimes.

The Triton Python model (``triton_python_model.py``, copied as ``bert-ranker/1/model.py``) and the
TorchServe handler (``torchserve_handler.py``, in ``bert-ranker.mar``) decode requests their own
way, then check and score them the same way, here. Each runtime loads this file from beside its
entry file (the writers of the model repository and of the archive copy it there), so it imports
numpy only. Its module name is distinctive because Triton appends that folder to ``sys.path``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TypeVar

import numpy as np

Key = TypeVar("Key", bound=Hashable)


def check_arrays(names: Sequence[str], arrays: Sequence[np.ndarray], max_length: int,
                 vocab_size: int | None) -> None:
    """Check one request's ``input_ids``, ``attention_mask``, ``token_type_ids`` (2-D int64).

    Raises:
        ValueError: shapes differ, the batch is empty, a sequence is longer than the model takes,
            an id is outside the vocabulary, or a mask or type id is not 0 or 1 (named).
    """
    shape = arrays[0].shape
    for name, array in zip(names, arrays, strict=True):
        if array.shape != shape:
            raise ValueError(f"input '{name}': shape {list(array.shape)} differs from "
                             f"'{names[0]}' shape {list(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"empty batch: shape {list(shape)}")
    if shape[1] > max_length:
        raise ValueError(f"sequence length {shape[1]} exceeds the model's maximum {max_length}")
    ids, mask, types = arrays
    if ids.min() < 0 or (vocab_size and ids.max() >= vocab_size):
        raise ValueError(f"input '{names[0]}': token id outside the vocabulary")
    for name, array in ((names[1], mask), (names[2], types)):
        if array.min() < 0 or array.max() > 1:
            raise ValueError(f"input '{name}': values must be 0 or 1")


def largest_batch(max_batch_size: int, max_length: int) -> list[np.ndarray]:
    """The largest request the model may be handed: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` of shape ``[max_batch_size, max_length]`` (at least one row).

    Scored once at load, it sizes ONNX Runtime's memory arena before traffic comes (a serving
    process's memory then stays flat instead of growing to the largest batch seen). The values do
    not matter to the memory, only the shape: padding ids, a full mask, segment 0.
    """
    shape = (max(1, max_batch_size), max_length)
    return [np.zeros(shape, np.int64), np.ones(shape, np.int64), np.zeros(shape, np.int64)]


def score_by_length(batch: Sequence[tuple[Key, list[np.ndarray]]],
                    run: Callable[[list[np.ndarray]], np.ndarray]
                    ) -> Iterator[tuple[Key, np.ndarray | Exception]]:
    """Score checked requests: one ``run`` per sequence length, the rows handed back per request.

    Requests of one length are concatenated so the server's batching pays off. When that call
    fails, each of its requests is scored on its own, so one bad request fails alone.

    Yields:
        ``(key, scores)`` per request, or ``(key, exception)`` for one that could not be scored.
    """
    groups: dict[int, list[tuple[Key, list[np.ndarray]]]] = defaultdict(list)
    for key, arrays in batch:
        groups[arrays[0].shape[1]].append((key, arrays))
    for members in groups.values():
        try:
            scores = run([np.concatenate([a[k] for _, a in members])
                          for k in range(len(members[0][1]))])
        except Exception:  # noqa: BLE001 - isolate the failing request, answer the rest
            for key, arrays in members:
                try:
                    yield key, run(arrays)
                except Exception as exc:  # noqa: BLE001 - one request's failure, not the batch's
                    yield key, exc
            continue
        offset = 0
        for key, arrays in members:
            n = arrays[0].shape[0]
            yield key, scores[offset : offset + n]
            offset += n
