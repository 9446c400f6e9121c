"""Models: one registry and factory per task, self-describing checkpoints.

    >>> from leukodx.models import create_model
    >>> net = create_model("classify", "resnet18", num_classes=4)
"""

from leukodx.models.checkpoint import load_model, read_config, save_model
from leukodx.models.registry import available, create_model, register

__all__ = ["available", "create_model", "load_model", "read_config", "register", "save_model"]
