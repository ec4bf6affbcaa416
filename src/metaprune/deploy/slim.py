"""``conv4-slim``: Conv4 with one width per block, what structured pruning produces.

The model is :class:`metaprune.models.conv4.Conv4` built with ``widths=[...]`` and registered
as ``conv4-slim`` in :mod:`metaprune.models` (torch only), so a device can rebuild it without
training code. This module keeps the historical import path.
"""

from __future__ import annotations

from ..models.conv4 import Conv4 as Conv4Slim

__all__ = ["Conv4Slim"]
