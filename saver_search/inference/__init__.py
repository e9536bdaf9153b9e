"""The torch side: loading timm models, preprocessing and decoding images, caching predictions (locally, on
several devices, on Ray), the cascade file and the runtime that serves it.

Modules: ``models``, ``preprocess``, ``images``, ``cache``, ``ray_engine``, ``cascade_file``, ``runtime``. May
import every subpackage above it (``report``, ``search``, ``cascade``, ``predictions``, ``zoo``) and the base
modules.
"""
