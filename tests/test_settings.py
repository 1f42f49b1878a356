"""The config, read once: command-line strings coerced by the schema, cross-key rules with errors that
name the key, and the workflow-level choices made in qcal.settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from snakemake.utils import validate

from conftest import snakemake, write_jpeg
from qcal import settings
from qcal.ranges import percentile

REPO = Path(__file__).resolve().parents[1]
SCHEMA = settings.read_schema(REPO / "config" / "schema.yaml")


def validated(config: dict) -> dict:
    config = settings.coerce_to_schema(config, SCHEMA)
    validate(config, str(REPO / "config" / "schema.yaml"))
    return config


def test_command_line_strings_become_the_schema_types():
    # what Snakemake passes for --config preprocess='{height: 64}' quantization='{...}' search='{...}'
    raw = {"preprocess": {"height": "64", "mean": ["0", "0.5", "1"]},
           "quantization": {"per_channel": "false", "reduce_range": "true", "percentile": "99.9",
                            "activations": "int16"},
           "search": {"max_drop": "null"}, "evaluation": {"images": "null", "holdout": "0"}}
    config = settings.coerce_to_schema(raw, SCHEMA)
    assert config["preprocess"] == {"height": 64, "mean": [0, 0.5, 1.0]}
    assert config["quantization"] == {"per_channel": False, "reduce_range": True, "percentile": 99.9,
                                      "activations": "int16"}
    assert config["search"]["max_drop"] is None and config["evaluation"] == {"images": None, "holdout": 0.0}
    assert settings.coerce_to_schema({"preprocess": {"height": "tall"}}, SCHEMA) == {"preprocess": {"height": "tall"}}
    # a key that takes a number or a word (anyOf in the schema)
    assert settings.coerce_to_schema({"search": {"threads": "3"}}, SCHEMA) == {"search": {"threads": 3}}
    assert settings.coerce_to_schema({"search": {"threads": "auto"}}, SCHEMA) == {"search": {"threads": "auto"}}


def test_auto_threads_are_the_cores_this_process_may_use():
    import os

    assert settings.load(validated({})).threads("search") == len(os.sched_getaffinity(0))
    assert settings.load(validated({"evaluation": {"threads": 3}})).threads("evaluation") == 3
    with pytest.raises(Exception, match="threads"):
        validated({"search": {"threads": 0}})


def test_defaults_choose_the_default_photos_model_and_pseudo_labels():
    s = settings.load(validated({}))
    assert s.default_images and s.image_folder == settings.DEFAULT_IMAGE_FOLDER
    assert s.default_model and s.model_path == "resources/models/yolov3-tiny-640x640.onnx"
    assert s.label_source == "pseudo" and s.holdout == 0.2 and not s.snpe_backend
    # the default target: Qualcomm's HTP of a Snapdragon 8 Gen 3, w8a16; nothing left for a search to raise
    assert s.target.runtime == "htp" and [soc.name for soc in s.target.socs] == ["SM8650"]
    assert s.target.activations == "int16" and s.target.tail == "float" and not s.search and s.evaluate_on_htp
    assert s.quantization_params["activations"] == "int16" and s.search_params["max_drop"] is None
    assert s.search_params["backend"] == "cpu" and s.search_params["soc_model"] is None
    on_htp = settings.load(validated({"search": {"backend": "htp"}, "target": {"socs": ["SM8550", "SM8650"]}}))
    assert on_htp.search_params["soc_model"] == "43"  # the first SoC's simulator scores the steps


def test_label_source_follows_what_is_given(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "coco.json").write_text("{}")
    assert settings.load(validated({"labels": {"yolo_dir": str(tmp_path / "labels")}})).label_source == "yolo"
    assert settings.load(validated({"labels": {"coco_json": str(tmp_path / "coco.json")}})).label_source == "coco"
    assert settings.load(validated({"labels": {"source": "pseudo", "coco_json": str(tmp_path / "coco.json")}})
                         ).label_source == "pseudo"


@pytest.mark.parametrize("config, key, message", [
    ({"images": "/no/such/folder"}, "images", "does not exist"),
    ({"labels": {"source": "yolo"}}, "labels.yolo_dir", "does not exist"),
    ({"labels": {"names": "/no/names.txt"}}, "labels.names", "does not exist"),
    ({"raws": "temporary", "quantization": {"backend": "snpe"}}, "raws", "keep them"),
    ({"evaluation": {"images": "/no/eval"}}, "evaluation.images", "does not exist"),
    ({"preprocess": {"profile": "yolov5", "pad_value": 300}}, None, "is greater than the maximum"),
    ({"target": {"runtime": "cpu"}, "search": {"backend": "htp"}}, "search.backend", "needs target.runtime: htp"),
])
def test_bad_settings_name_the_key(config, key, message):
    with pytest.raises(Exception, match=message) as error:
        settings.load(validated(config))
    if key is not None:
        assert isinstance(error.value, settings.ConfigError) and error.value.key == key


def test_evaluation_folder_and_holdout_together_are_refused(tmp_path):
    with pytest.raises(settings.ConfigError, match="has no effect with evaluation.images"):
        settings.check_user_config({"evaluation": {"images": str(tmp_path), "holdout": 0.3}})
    settings.check_user_config({"evaluation": {"images": str(tmp_path)}})  # holdout left to its default: fine
    s = settings.load(validated({"evaluation": {"images": str(tmp_path)}}))
    assert s.evaluation_folder == str(tmp_path) and s.holdout == 0.0


def test_calibration_images_as_evaluation_images_hold_nothing_out():
    s = settings.load(validated({"evaluation": {"use_calibration_images": True}}))
    assert s.evaluate_on_calibration and s.holdout == 0.0


def test_schema_percentile_bounds_are_the_range_methods_bounds():
    bounds = SCHEMA["properties"]["quantization"]["properties"]["percentile"]
    from qcal.stats import TensorStats
    import numpy as np

    stats = TensorStats.from_values(np.linspace(-1, 1, 1001))
    percentile(stats, bounds["minimum"])
    percentile(stats, bounds["maximum"])
    for outside in (bounds["minimum"] - 1, bounds["maximum"] + 1):
        with pytest.raises(ValueError):
            percentile(stats, outside)


def test_project_folder_with_white_space_is_refused_for_absolute_lists(tmp_path):
    s = settings.load(validated({}))
    with pytest.raises(settings.ConfigError, match="white space") as error:
        settings.check_environment(s, str(tmp_path / "my project"))
    assert error.value.key == "input_list.paths"
    settings.check_environment(settings.load(validated({"input_list": {"paths": "relative"}})),
                               str(tmp_path / "my project"))


def test_nested_command_line_overrides_reach_the_workflow(tmp_path):
    images = tmp_path / "images"
    write_jpeg(images / "a.jpg")
    done = snakemake(tmp_path / "work", {"images": str(images), "evaluation": {"holdout": 0}}, "-n",
                     "results/input_list.txt", "--config", "preprocess={height: 64, width: 96}",
                     "quantization={activations: int16, per_channel: false}")
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout, flags=re.M))
    assert stats["raw"] == "1" and stats["input_list"] == "1"
    bad = snakemake(tmp_path / "work", {"images": str(images)}, "-n", "--config", "preprocess={height: tall}",
                    check=False)
    assert bad.returncode != 0 and "'tall' is not of type 'integer'" in bad.stdout + bad.stderr
