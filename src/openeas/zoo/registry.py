"""The models ``openeas models fetch`` knows, and writing one into a repository."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from openeas.zoo import densenet, inception
from openeas.zoo.labels import LabelsUnavailable, imagenet_class_names, inception_labels

#: name -> one-line description.
MODELS: dict[str, str] = {
    inception.NAME: "InceptionV3 as a frozen TensorFlow GraphDef (Triton's example; needs "
    "the tensorflow extra unless --from gives the graph)",
    densenet.NAME: "a small DenseNet-style ONNX classifier with the names and config of "
    "Triton's densenet_onnx (needs the onnx package unless --from gives the model)",
}


class ZooError(Exception):
    """A model cannot be written; the message says why and what to do."""


def fetch(
    name: str,
    repository: Path,
    *,
    source: Path | None = None,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write model ``name`` into ``repository/<name>``; returns that directory."""
    if name not in MODELS:
        raise ZooError(f"unknown model '{name}'; known models: {', '.join(sorted(MODELS))}")
    if source is not None and not source.is_file():
        raise ZooError(f"--from: {source} is not a file")
    model_dir = repository / name
    if model_dir.exists() and not force:
        raise ZooError(f"{model_dir} already exists; pass --force to replace it")
    # Build next to the target and swap it in at the end: a failed or interrupted fetch
    # leaves any previous model untouched (and a dot-directory the server ignores).
    partial = repository / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if name == densenet.NAME:
            densenet.write(
                partial, imagenet_class_names(), source=source, seed=seed, progress=progress
            )
        else:
            inception.write(
                partial, inception_labels(), source=source, seed=seed, progress=progress
            )
    except (LabelsUnavailable, RuntimeError, ValueError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ZooError(str(exc)) from None
    if model_dir.exists():
        shutil.rmtree(model_dir)
    partial.rename(model_dir)
    return model_dir
