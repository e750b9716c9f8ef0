"""hpsearch: hyperparameter search for fine-tuning torchvision models, from one YAML file."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hpsearch")
except PackageNotFoundError:  # a plain checkout on a GPU box, not installed
    __version__ = "0+unknown"
