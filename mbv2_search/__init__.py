"""mbv2-search: scaling experiments and architecture search on the MobileNetV2 design space."""

from importlib.metadata import version

__version__ = version("mbv2-search")
