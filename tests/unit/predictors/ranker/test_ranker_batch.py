"""What both Python runtimes of ``bert-ranker`` share (``bert_ranker_batch``), and the ONNX Runtime
session the Triton Python model opens."""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import pytest

from predictors.ranker.bert_ranker_batch import check_arrays, largest_batch
from predictors.ranker.server import triton_dist
from shopserve.protocol import RANKER

NAMES = [spec.name for spec in RANKER.inputs]


@pytest.fixture
def triton_model(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The model file imports Triton's pure-Python utilities, as the stub hands them over.
    monkeypatch.syspath_prepend(str(triton_dist() / "backends" / "python"))
    return importlib.import_module("predictors.ranker.triton_python_model")


@pytest.mark.parametrize(("max_batch", "rows"), [(256, 256), (0, 1)])
def test_largest_batch_is_a_valid_request_of_the_largest_shape(max_batch: int, rows: int) -> None:
    arrays = largest_batch(max_batch, 32)
    assert [a.shape for a in arrays] == [(rows, 32)] * 3
    assert all(a.dtype == np.int64 for a in arrays)
    check_arrays(NAMES, arrays, max_length=32, vocab_size=30522)  # the model's own checks pass


def test_session_keeps_the_arena_without_per_shape_memory_patterns(triton_model: ModuleType) -> None:
    # The choice bench/results/soak.md measured: memory flat after the warm-up, latency unchanged.
    options = triton_model.session_options(2)
    assert options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
