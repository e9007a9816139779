"""Model registry and the built-in models: ``mlp``, ``cnn``, CIFAR ResNets and ``torchvision``.

Models take N×C×H×W float tensors (already normalised) and return N×num_classes logits; they know
nothing of distillation, export or benchmarks. Feature layers are addressed by module path.
"""

# The model modules are imported for their @register_model side effects.
from kdeploy.models import (  # noqa: F401
    cifar_resnet,
    cnn,
    dwcnn,
    ensemble,
    fast_cnn,
    mlp,
    timm_models,
    torchvision_models,
)
from kdeploy.models.registry import (
    MODELS,
    build_model,
    check_model,
    count_params,
    create_model,
    import_target,
    list_archs,
    list_models,
    model_meta,
    module_paths,
    register_model,
)

__all__ = [
    "MODELS",
    "build_model",
    "check_model",
    "count_params",
    "create_model",
    "import_target",
    "list_archs",
    "list_models",
    "model_meta",
    "module_paths",
    "register_model",
]
