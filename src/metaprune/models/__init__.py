"""Backbones, built by name from a registry (``build_model("conv4", ...)``)."""

from .conv4 import Conv4
from .registry import MODELS, build_model, register_model
from .resnet12 import ResNet12

__all__ = ["Conv4", "ResNet12", "MODELS", "build_model", "register_model"]
