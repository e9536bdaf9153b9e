"""The pure NumPy core: evaluating cascades from cached predictions, committees, confidence scores, the
calibration/test split and the guarantee, the brute-force reference.

Modules: ``evaluate`` (``CascadeSpec``, threshold and path curves), ``committees``, ``scores`` (one registry),
``guarantee`` (split, upper bounds, Learn-then-Test), ``frontier`` (cheapest cascade per number of extra errors),
``results`` (``Outcome``, ``Figures``), ``reference`` (brute force for small spaces). May import: ``predictions``,
``zoo`` and the base modules; never torch or Optuna.
"""
