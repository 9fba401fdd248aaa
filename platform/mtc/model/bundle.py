"""A trained model as plain files: ``model.pt`` (state_dict, loaded with weights_only) + ``model.json``.

``model.json`` holds everything else needed to predict from raw structures: the model's
hyperparameters and task specs, the target normaliser and the featurizer's graph parameters.
No pickled module anywhere. ``model.json`` carries a ``format_version``; a bundle of another version is refused
with a message that says what to do, never half-loaded.

An ensemble of K > 1 members (``mtc train --ensemble K``) is format 2: ``model.pt`` holds every member's weights
under ``members.<k>.<key>``, and ``model.json`` adds ``n_members`` and the ``calibration`` of its intervals
(``mtc.model.calibration``). A single model is still written as format 1, byte for byte as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtc import __version__
from mtc.errors import MtcError
from mtc.model.multitask import MultiTaskCGCNN, model_from_config

WEIGHTS, META = "model.pt", "model.json"
FORMAT_VERSION = 2  # the newest this mtc reads and writes (ensembles); single models are written as format 1
SINGLE_FORMAT = 1
_MEMBER = "members."


class BundleError(MtcError):
    """A saved model this mtc cannot read."""


@dataclass
class ModelBundle:
    """Weights plus what gives them meaning.

    Attributes:
        model_config: ``MultiTaskCGCNN`` keyword arguments, tasks included.
        mean: (T,) normaliser means; std: (T,) normaliser standard deviations.
        graph_params: featurizer parameters the model was trained with (radius, max_neighbors, ...).
        state_dict: the weights (of the first member of an ensemble).
        members: every member's weights, for an ensemble of K > 1 (``members[0] is state_dict``); else empty.
        calibration: ``Calibration.to_dict()`` of an ensemble's intervals; None for a single model.
        domain: ``Domain.to_dict()`` of an ensemble's training data (out-of-domain flags); None for a single model.
    """

    model_config: dict[str, Any]
    mean: list[float]
    std: list[float]
    graph_params: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    domain: dict[str, Any] | None = None

    @classmethod
    def from_model(cls, model: MultiTaskCGCNN, mean, std, graph_params: dict) -> ModelBundle:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(model.config(), [float(x) for x in mean], [float(x) for x in std], dict(graph_params), state)

    @classmethod
    def ensemble(cls, bundles: list[ModelBundle], calibration: dict[str, Any], domain: dict[str, Any]) -> ModelBundle:
        """K >= 2 bundles of one config and normaliser (the members) as one bundle, with their calibration and
        training domain."""
        first = bundles[0]
        if any(b.model_config != first.model_config or b.mean != first.mean for b in bundles):
            raise BundleError("ensemble members must share the model config and the normaliser")
        states = [b.state_dict for b in bundles]
        return cls(
            first.model_config, first.mean, first.std, first.graph_params, states[0], states, calibration, domain
        )

    @property
    def n_members(self) -> int:
        return max(1, len(self.members))

    def build_members(self, device: torch.device | str = "cpu") -> list[MultiTaskCGCNN]:
        """Every member with its weights, in eval mode (one model for a single-model bundle)."""
        states = self.members or [self.state_dict]
        return [model_from_config(self.model_config, s).to(device).eval() for s in states]

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.model_config["tasks"]]

    def build(self, device: torch.device | str = "cpu") -> MultiTaskCGCNN:
        """The model with its weights, in eval mode."""
        return model_from_config(self.model_config, self.state_dict).to(device).eval()

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": SINGLE_FORMAT,
            "model_config": self.model_config,
            "mean": self.mean,
            "std": self.std,
            "graph_params": self.graph_params,
        }
        if self.n_members == 1:
            torch.save(self.state_dict, folder / WEIGHTS)
        else:
            flat = {f"{_MEMBER}{k}.{key}": v for k, state in enumerate(self.members) for key, v in state.items()}
            torch.save(flat, folder / WEIGHTS)
            meta.update(
                format_version=FORMAT_VERSION,
                n_members=self.n_members,
                calibration=self.calibration,
                domain=self.domain,
            )
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
        if version not in (SINGLE_FORMAT, FORMAT_VERSION):
            raise BundleError(
                f"{folder / META} has model format {version}; this mtc "
                f"{__version__} reads formats {SINGLE_FORMAT} and {FORMAT_VERSION}: "
                + (
                    "upgrade mtc (pip install -U mtc)"
                    if isinstance(version, int) and version > FORMAT_VERSION
                    else "retrain the model with this mtc"
                )
            )
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        members: list[dict[str, torch.Tensor]] = []
        if meta.get("n_members", 1) > 1:
            members = [{} for _ in range(meta["n_members"])]
            for key, value in state.items():
                k, _, name = key.removeprefix(_MEMBER).partition(".")
                members[int(k)][name] = value
            state = members[0]
        return cls(
            meta["model_config"],
            meta["mean"],
            meta["std"],
            meta["graph_params"],
            state,
            members,
            meta.get("calibration"),
            meta.get("domain"),
        )
