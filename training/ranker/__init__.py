"""The BERT cross-encoder ranker build: pairs, fine-tuning, ONNX export, int8, pruning,
distillation, the quality guard and packaging."""
