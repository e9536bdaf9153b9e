"""Where per-image predictions come from: the on-disk store, the source contract, importers, the simulated zoo.

Modules: ``store`` (the prediction store: memory-mapped arrays, ``ModelMeta``, ``ModelPredictions``), ``sources``
(``PredictionSource`` and its implementations, ``open_source``), ``importers`` (CSV / ``.npz`` / ``.npy``),
``simulate`` (the embedded default: predictions simulated from published top-1). May import: ``zoo`` and the base
modules. No torch.
"""
