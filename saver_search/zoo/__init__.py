"""What is known about timm models without running them: names, the shipped published tables, costs, FLOPs and
measured latency.

Modules: ``names`` (the one ``arch.tag`` splitter, resolving a user's name), ``tables`` (the shipped zoo and cost
tables, data only), ``costs`` (GMACs per image: table, disk cache, live count), ``flops`` (counting on the meta
device), ``latency`` (measured forward passes). May import: the package's base modules (``errors``, ``files``,
``compat``, ``_validation``). torch and timm load only inside ``flops``/``latency``/``names`` calls that need them.
"""
