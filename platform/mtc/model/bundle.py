"""A trained model as plain files: ``model.pt`` (state_dict, loaded with weights_only) + ``model.json``.

``model.json`` holds everything else needed to predict from raw structures: the model's
hyperparameters and task specs, the target normaliser and the featurizer's graph parameters.
No pickled module anywhere. ``model.json`` carries a ``format_version``; a bundle of another version is refused
with a message that says what to do, never half-loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtc import __version__
from mtc.errors import MtcError
from mtc.model.multitask import MultiTaskCGCNN, model_from_config

WEIGHTS, META = "model.pt", "model.json"
FORMAT_VERSION = 1


class BundleError(MtcError):
    """A saved model this mtc cannot read."""


@dataclass
class ModelBundle:
    """Weights plus what gives them meaning.

    Attributes:
        model_config: ``MultiTaskCGCNN`` keyword arguments, tasks included.
        mean: (T,) normaliser means; std: (T,) normaliser standard deviations.
        graph_params: featurizer parameters the model was trained with (radius, max_neighbors, ...).
        state_dict: the weights.
    """

    model_config: dict[str, Any]
    mean: list[float]
    std: list[float]
    graph_params: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @classmethod
    def from_model(cls, model: MultiTaskCGCNN, mean, std, graph_params: dict) -> ModelBundle:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(model.config(), [float(x) for x in mean], [float(x) for x in std], dict(graph_params), state)

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.model_config["tasks"]]

    def build(self, device: torch.device | str = "cpu") -> MultiTaskCGCNN:
        """The model with its weights, in eval mode."""
        return model_from_config(self.model_config, self.state_dict).to(device).eval()

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, folder / WEIGHTS)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_config": self.model_config,
            "mean": self.mean,
            "std": self.std,
            "graph_params": self.graph_params,
        }
        (folder / META).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> ModelBundle:
        folder = Path(folder)
        missing = [name for name in (META, WEIGHTS) if not (folder / name).exists()]
        if missing:
            raise BundleError(f"{folder} holds no saved mtc model ({' and '.join(missing)} missing)")
        meta = json.loads((folder / META).read_text())
        version = meta.get("format_version", 1)  # mtc 0.1 wrote format 1 before the field existed
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{folder / META} has model format {version}; this mtc "
                f"{__version__} reads format {FORMAT_VERSION}: "
                + (
                    "upgrade mtc (pip install -U mtc)"
                    if isinstance(version, int) and version > FORMAT_VERSION
                    else "retrain the model with this mtc"
                )
            )
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        return cls(meta["model_config"], meta["mean"], meta["std"], meta["graph_params"], state)
