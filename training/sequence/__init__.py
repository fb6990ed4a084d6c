"""The sequential recommender's build: per-shopper item sequences, the leave-one-out split, a
SASRec-style Transformer trained with a full-softmax next-item objective, its evaluation, the ONNX
serving graph of the ``seq-recommender`` contract, and the component files.

The pipeline calls :func:`training.sequence.build.train_sequence_model` and then
:func:`training.sequence.build.export_sequence`.
"""
