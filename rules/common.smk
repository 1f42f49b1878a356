# Settings and input functions. The policy (which images, which labels, which checks) lives in tested
# Python (qcal.settings, qcal.plan); this file only connects it to the rules.
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import qcal.workflow as jobs
from qcal import settings as qcal_settings
from qcal.errors import QcalError
from qcal.plan import FolderPlan, Plan, folder_digests

try:
    qcal_settings.check_user_config(config)
    _schema = os.path.join(workflow.basedir, "config", "schema.yaml")
    config.update(qcal_settings.coerce_to_schema(config, qcal_settings.read_schema(_schema)))
    validate(config, _schema)
    S = qcal_settings.load(config)
    qcal_settings.check_environment(S, os.getcwd())
except QcalError as err:
    raise WorkflowError(str(err))


def soc_model_of(wildcards):
    from qcal.targets import find_soc

    return find_soc(wildcards.soc).soc_model


# What the target runs: a QDQ model, or for the gpu runtime the float model with its weights as the
# GPU dequantizes them when it loads a quantized model (the QDQ model is then only a step).
SHIPPED_MODEL = "results/model_quantized.onnx" if S.target.quantized_model else "results/model_weights_dequantized.onnx"
HTP_OUTPUTS = [f"results/htp/{soc.name}/{name}" for soc in S.target.socs for name in ("check.json", "model_ctx.onnx")]


# Parameters every job that reads raws shares (any change to the profile rebuilds every raw).
PROFILE = {"profile": S.profile_name, "profile_settings": S.profile_json}


# Image folders are listed, split and hashed once per DAG build, not once per input-function call.
_MEMO = {}


def plan():
    if "plan" not in _MEMO:
        if S.default_images:
            checkpoints.default_images.get()  # raises until fetched, so nothing is cached before that
        try:
            calibration = FolderPlan.scan(S.image_folder, config["on_bad_image"], "images")
            evaluation = (FolderPlan.scan(S.evaluation_folder, config["on_bad_image"], "evaluation.images")
                          if S.evaluation_folder else None)
            _MEMO["plan"] = Plan(calibration, evaluation, S.holdout, S.evaluate_on_calibration,
                                 config["calibration"]["shards"], config["search"]["calibration_images"],
                                 config["evaluation"]["search_share"] if S.search else 0.0)
            _MEMO["digests"] = {"raw": folder_digests(calibration, "images"),
                                "eval_raw": folder_digests(evaluation, "evaluation") if evaluation else {}}
        except QcalError as err:
            raise WorkflowError(str(err))
    return _MEMO["plan"]


# Snakemake reads any "{word}" in an input path as a wildcard and has no escape for it. Such images are
# not declared as inputs; the job reads them from params.source, whose content digest still reruns the
# raw whenever the image changes.
from snakemake_interface_storage_plugins.io import WILDCARD_REGEX


def declared(path):
    return [] if WILDCARD_REGEX.search(path) else path


@jobs.signature_computed_once
def image_of_raw(wildcards):
    folder = plan().calibration_folder
    return declared(os.path.join(folder.root, folder.image_of(wildcards.stem)))


@jobs.signature_computed_once
def eval_image_of_raw(wildcards):
    folder = plan().evaluation_folder
    return declared(os.path.join(folder.root, folder.image_of(wildcards.stem)))


@jobs.signature_computed_once
def raw_source(wildcards):
    """(image path, content hash): a changed image reruns its raw even when its file time is older."""
    folder = plan().calibration_folder
    image = folder.image_of(wildcards.stem)
    return os.path.join(folder.root, image), _MEMO["digests"]["raw"][image]


@jobs.signature_computed_once
def eval_raw_source(wildcards):
    folder = plan().evaluation_folder
    image = folder.image_of(wildcards.stem)
    return os.path.join(folder.root, image), _MEMO["digests"]["eval_raw"][image]


def calibration_raws(wildcards):
    return plan().calibration_raws("raw")


def calibration_sidecars(wildcards):
    return plan().calibration_raws("json")


def test_raws(wildcards):
    return plan().test_raws("raw")


def test_sidecars(wildcards):
    return plan().test_raws("json")


def separate_evaluation_sidecars(wildcards):
    """Sidecars of evaluation images that are not also calibration images (for the skipped report)."""
    return [] if S.evaluate_on_calibration else plan().evaluation_raws("json")


def unusable(kind):
    def listed(wildcards):
        folder = plan().calibration_folder if kind == "calibration" else plan().evaluation_folder
        return [[u.path, u.reason] for u in folder.unusable] if folder else []

    return listed


def shard_raws(wildcards):
    return plan().shard_raws(wildcards.shard, "raw")


def shard_sidecars(wildcards):
    return plan().shard_raws(wildcards.shard, "json")


def coverage_label_inputs(wildcards):
    """What the coverage report reads besides sidecars: label files, or the shards' detections."""
    if S.label_source == "yolo":
        from qcal.labels import yolo_label_path

        paths = [yolo_label_path(config["labels"]["yolo_dir"], i) for i in plan().calibration_images]
        return [str(p) for p in paths if p.is_file()]
    if S.label_source == "coco":
        return [config["labels"]["coco_json"]]
    return expand("results/calibration/shard-{shard}.detections.tsv", shard=range(config["calibration"]["shards"]))


def search_evaluation_raws(kind):
    """The accuracy search reads its share of the evaluation images and a stable sample of the
    calibration images, only when it runs."""

    def raws(wildcards):
        return plan().search_raws(kind) if S.search else []

    return raws


def search_calibration_raws(kind):
    def raws(wildcards):
        return plan().search_calibration_raws(kind) if S.search else []

    return raws
