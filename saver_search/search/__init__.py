"""The search, on Optuna: the space, the objective, stored studies and their workers, the run and its summary,
and the caching plan that a search implies.

Modules: ``space`` (YAML spaces, validated on load), ``objective`` (one trial scores one cascade), ``study`` (the
study spec and fingerprint, storages, the worker protocol), ``run`` (``prepare_search``, ``run_search``,
``load_study``, ``summarise``), ``plan`` (which models to cache). May import: ``cascade``, ``predictions``, ``zoo``
and the base modules. No torch.
"""
