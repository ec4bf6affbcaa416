"""Device side: the compact ``.mpz`` export (``format``), the adaptation runtime (``runtime``),
ONNX export of an adapted model (``onnx_export``) and their subcommands (``cli``).

Kept import-free on purpose: ``metaprune.deploy.runtime`` must load with torch, numpy and
Pillow only (no training, pruning, plotting or progress-bar modules).
"""
