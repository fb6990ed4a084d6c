"""The BERT cross-encoder ranker served on Triton as ``bert-ranker``.

Modules (imported directly; this package imports nothing so that ``python -m predictors.ranker``
starts without loading torch):

* ``build``: ``build_ranker(dataset, out_dir, config) -> Manifest`` (the pipeline's entry point),
  ``RankerBuildConfig.tiny()/.demo()``, ``train_and_optimise`` (for the benchmark).
* ``pairs``: candidate lists with hard and random negatives, training pairs, ``encode_pairs``
  (dynamic padding), ``choose_max_length``.
* ``modeling``: offline MiniLM loading, layer pruning, torch scoring.
* ``train``: seeded fine-tuning and distillation.
* ``evaluate``: NDCG@10 / MRR reranking against BM25 and the zero-shot bi-encoder.
* ``optimise``: ONNX export, BERT fusion, int8 quantisation, ONNX Runtime scoring, quality guard.
* ``triton_repo``: the bundle's model repository (onnxruntime; ``config.pbtxt`` for the GPU with
  the fp32 graph, ``configs/cpu.pbtxt`` for ``--model-config-name=cpu`` with the int8 graph) and the
  local (Python backend) one; ``triton_python_model.py`` is the local backend's ``model.py``.
* ``server``: ``RankerSettings`` and ``TritonServer`` (the local ``tritonserver`` process).

Never import kserve here: this process may use ``tritonclient.grpc`` (DESIGN.md).
"""
