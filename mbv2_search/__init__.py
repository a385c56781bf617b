"""mbv2-search: scaling experiments and architecture search on the MobileNetV2 design space."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mbv2-search")
except PackageNotFoundError:  # run from a source tree without installing (e.g. the GPU check)
    __version__ = "0.0.0+source"
