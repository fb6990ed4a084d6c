"""The semantic retrieval path's build: a MiniLM bi-encoder (all-MiniLM-L6-v2, mean pooling, L2
normalised) fine-tuned on the training queries' grade-3 judgements with an in-batch-negative
contrastive loss, the item embeddings, their FAISS HNSW index, the ONNX graph of the
``query-encoder`` contract and the component's files.

The pipeline calls :func:`training.semantic.build.train_semantic` and then
:func:`training.semantic.build.export_semantic`; packaging the Triton repository around the graph
and the manifest is ``pipeline.lifecycle.semantic``'s job.
"""
