"""The search, on Optuna: the space, the objective, stored studies and their workers, the run and its summary,
and the caching plan that a search implies.

Modules: ``space`` (YAML spaces, validated on load), ``keys`` (every name a study stores), ``spec`` (the study spec
and the data fingerprint), ``storages`` (opening storages), ``objective`` (one trial scores one cascade), ``study``
(race-free creation, the worker protocol), ``run`` (``prepare_search``, ``run_search``,
``load_study``, ``summarise``), ``plan`` (which models to cache). May import: ``cascade``, ``predictions``, ``zoo``
and the base modules. No torch.
"""
