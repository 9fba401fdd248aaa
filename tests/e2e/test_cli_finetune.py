"""``mtc train --init``: fine-tuning a registered model on a slice of the real elastic set, through the CLI."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from mtc import tracking
from mtc.config import FeaturizeConfig
from mtc.data.featurize import featurize
from mtc.registry.models import load_bundle, load_source, promote
from mtc_cli.app import app
from tests.conftest import REPO, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ELASTIC = REPO / "data" / "mp36k" / "mp_elastic_3191.jsonl.gz"
TASKS = ["log10_bulk_modulus", "log10_shear_modulus"]


@pytest.fixture(scope="module")
def elastic_shards(tmp_path_factory, ray_session):
    """300 real crystals with elastic moduli; one bulk modulus set to 0 (no log10: a counted missing label)."""
    with gzip.open(ELASTIC, "rt") as fh:
        rows = [json.loads(line) for line in islice(fh, 300)]
    rows[0]["bulk_modulus_vrh"] = 0.0
    folder = tmp_path_factory.mktemp("elastic")
    src = write_jsonl(folder / "elastic300.jsonl", rows)
    featurize(src, folder / "shards", FeaturizeConfig(), labels=["bulk_modulus_vrh", "shear_modulus_vrh"])
    return folder / "shards"


def test_finetune_from_a_registered_model(trained, elastic_shards):
    """New heads on the source's trunk; frozen layers unchanged; lineage on the run and the registered version."""
    version = trained.registered["version"]
    promote("mtc-test", version, "finetune-parent")
    args = ["train", "--data", str(elastic_shards), "-c", "configs/elastic.yaml", "--init"]
    args += ["models:/mtc-test@finetune-parent", "--register", "mtc-finetuned"]
    for override in ("epochs=2", "batch_size=32", "finetune.freeze=convs:1", "finetune.trunk_lr=0.5"):
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "model.atom_fea_len 64 -> 32 (the source model's)" in result.output  # configs/tiny.yaml's trunk
    assert "log10_bulk_modulus: 1 label(s) outside the transform's domain" in result.output
    parent_uri = f"models:/mtc-test/{version}"  # the alias, resolved
    client = mlflow.MlflowClient(tracking.tracking_uri())
    versions = client.search_model_versions("name='mtc-finetuned'")
    assert len(versions) == 1 and versions[0].tags["mtc.parent_model"] == parent_uri
    run = client.get_run(versions[0].run_id)
    assert run.data.tags["mtc.parent_model"] == run.data.params["parent_model"] == parent_uri
    assert run.data.params["n_invalid_labels.log10_bulk_modulus"] == "1"

    tuned = load_bundle(f"models:/mtc-finetuned/{versions[0].version}")
    source = trained.bundle.state_dict
    assert tuned.task_names == TASKS and tuned.model_config["atom_fea_len"] == 32
    frozen = ("trunks.0.embedding.", "trunks.0.element_table", "trunks.0.convs.0.")
    for key, value in tuned.state_dict.items():
        if key.startswith(frozen):  # weights and BatchNorm statistics both: frozen layers run in eval mode
            assert torch.equal(value, source[key]), key
    trained_keys = [k for k in tuned.state_dict if k.startswith("trunks.0.convs.1.") and k.endswith("weight")]
    assert trained_keys and all(not torch.equal(tuned.state_dict[k], source[k]) for k in trained_keys)


def test_a_source_that_is_not_a_model_is_a_message(elastic_shards, tmp_path):
    args = ["train", "--data", str(elastic_shards), "-c", "configs/elastic.yaml", "--init", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "model.json and model.pt missing" in result.output
    result = CliRunner().invoke(app, [*args[:-1], "models:/no-such-model@champion"])
    assert result.exit_code == 2 and "no-such-model" in result.output and "Traceback" not in result.output


def test_finetune_in_process_from_a_bundle_folder_with_a_frozen_trunk(trained, elastic_shards, tmp_path):
    """The benchmarks' path: the same loop in the driver process (Ray Train's local mode), a bundle folder as source."""
    from mtc.config import TrainConfig, load_config
    from mtc.train.finetune import ParentModel, align_to_parent
    from mtc.train.trainer import train

    folder = trained.bundle.save(tmp_path / "source")
    uri, bundle = load_source(str(folder))
    assert uri == str(folder.resolve())
    config = load_config(TrainConfig, "configs/elastic.yaml", ["epochs=1", "batch_size=32", "finetune.freeze=trunk"])
    config, _ = align_to_parent(config, bundle)
    result = train(elastic_shards, config, parent=ParentModel(bundle, uri), in_process=True)
    tags = mlflow.MlflowClient(tracking.tracking_uri()).get_run(result.run_id).data.tags
    assert tags["mtc.parent_model"] == uri and result.invalid_labels == {
        "log10_bulk_modulus": 1,
        "log10_shear_modulus": 0,
    }
    source = trained.bundle.state_dict
    trunk = [k for k in result.bundle.state_dict if k.startswith("trunks.")]
    assert trunk and all(torch.equal(result.bundle.state_dict[k], source[k]) for k in trunk)
    assert all(0 < result.metrics[f"test/{task}/mae"] < 1 for task in TASKS)
