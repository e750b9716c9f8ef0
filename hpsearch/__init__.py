"""hpsearch: a YAML search space → an Optuna study that fine-tunes torchvision models, logged to MLflow."""

__version__ = "0.1.0"
