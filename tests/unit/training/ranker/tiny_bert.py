"""A tiny seeded BERT cross-encoder and its fused fp32 ONNX graph, for the ranker's graph tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from training.ranker.optimise import export_onnx, fuse_bert

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=40, num_labels=1)


def tiny_fused_graph(work: Path, name: str = "fused.onnx"
                     ) -> tuple[BertForSequenceClassification, Path]:
    """A seeded tiny cross-encoder (:data:`TINY`) and its fused fp32 graph at ``work/name``."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY, attn_implementation="eager")).eval()
    raw = export_onnx(model, work / "raw.onnx")
    return model, fuse_bert(raw, work / name, num_heads=TINY["num_attention_heads"],
                            hidden_size=TINY["hidden_size"])
