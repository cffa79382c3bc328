"""The contract every side of taoflow depends on, and which depends on none of them.

- `executor`: the Executor protocol (train, evaluate, prune, infer, export, code_version) both backends implement
  (taoflow.backends.native: PyTorch; taoflow.backends.tao: the real `tao` launcher), so the pipeline and the flows
  never care which one ran;
- `results`: the typed results those methods return;
- the model package (model.json, formats), the reference NMS semantics and the TensorRT op/plugin tables that the
  exporters, the package builder, preflight and the device agent agree on.

Nothing here imports taoflow.backends, taoflow.deploy, taoflow.pipeline, flows or Prefect (tests/test_layers.py).
"""
