"""The configuration, read once at workflow start: command-line strings coerced to the schema's types,
every cross-key rule checked with an error naming the key, and the workflow-level choices (which label
source, which images evaluate, which checks run) made here, in one tested place.

Parse-time code: this module stays free of heavy imports (no onnx, onnxruntime, pandas, matplotlib)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from qcal.cpu import usable_cores
from qcal.errors import QcalError
from qcal.preprocess import Profile, resolve_profile
from qcal.targets import Target, TargetError
from qcal.targets import resolve as resolve_target

_NULLS = ("null", "Null", "NULL", "~", "")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


class ConfigError(QcalError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}': {problem}")
        self.key = key


def _types(schema: dict) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _coerce_scalar(value: str, schema: dict) -> Any:
    """A string from `--config key='{...}'` (Snakemake parses nested values with YAML's BaseLoader, so
    every scalar arrives as a string) as the type the schema asks for; unchanged when none fits."""
    alternatives = [schema] + list(schema.get("anyOf", []))
    kinds = [kind for alternative in alternatives for kind in _types(alternative)]
    candidates = [c for alternative in alternatives for c in alternative.get("enum", [])]
    if "null" in kinds or None in candidates:
        if value in _NULLS:
            return None
    if "boolean" in kinds or any(isinstance(c, bool) for c in candidates):
        if value in _BOOLS:
            return _BOOLS[value]
    if "integer" in kinds or any(isinstance(c, int) and not isinstance(c, bool) for c in candidates):
        try:
            return int(value)
        except ValueError:
            pass
    if "number" in kinds:
        try:
            return float(value)
        except ValueError:
            pass
    return value


def coerce_to_schema(value: Any, schema: dict) -> Any:
    """value with every string the schema types otherwise converted (recursively); the schema's own
    validation then judges the result."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: coerce_to_schema(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [coerce_to_schema(v, schema["items"]) for v in value]
    if isinstance(value, str):
        return _coerce_scalar(value, schema)
    return value


@dataclass(frozen=True)
class Settings:
    """The validated config with every workflow-level choice made."""

    config: dict = field(repr=False)     # the validated config with schema defaults filled in
    image_folder: str                    # the calibration image folder (qcal's own for the default photos)
    default_images: bool
    model_path: str
    default_model: bool
    profile_name: str
    profile_overrides: dict
    profile: Profile
    temporary_raws: bool
    snpe_backend: bool
    label_source: str                    # yolo, coco or pseudo
    evaluation_folder: str | None        # a separate evaluation folder, else None
    holdout: float                       # share of the calibration folder held out (0 with a folder)
    evaluate_on_calibration: bool
    search: bool                         # the accuracy search runs (a budget is set and a layer can move)
    target: Target                       # the runtime preset, resolved
    evaluate_on_htp: bool

    @property
    def quantization_params(self) -> dict:
        """The quantization section with the target's choices in place of 'auto' (what rules track)."""
        section = dict(self.config["quantization"])
        section.update(activations=self.target.activations, tail=self.target.tail,
                       reduce_range="auto" if self.target.reduce_range is None else self.target.reduce_range)
        return section

    @property
    def search_params(self) -> dict:
        section = dict(self.config["search"])
        section["precision"] = self.target.search_precision
        # the simulator of the first SoC scores the steps; its id, not the whole list, is what the model depends on
        section["soc_model"] = self.target.socs[0].soc_model if section["backend"] == "htp" else None
        if not self.search:
            section["max_drop"] = None
        return section

    @property
    def target_params(self) -> dict:
        """What quantizing depends on of the target: not the SoC list itself (adding a SoC of the same
        kind must only check and prepare that SoC)."""
        t = self.target
        return {"runtime": t.runtime, "activations": t.activations, "tail": t.tail, "split_outputs": t.split_outputs,
                "int8_only": t.int8_only, "reasons": list(t.reasons)}

    @property
    def profile_json(self) -> str:
        """The profile overrides as one string: passed to every raw job, so any change rebuilds every raw."""
        return json.dumps(self.profile_overrides, sort_keys=True)

    def section(self, name: str) -> dict:
        return dict(self.config[name])

    def threads(self, name: str) -> int:
        """A section's `threads`, with auto as this machine's usable cores (Snakemake caps it at --cores)."""
        value = self.config[name]["threads"]
        return usable_cores() if value == "auto" else value


DEFAULT_IMAGE_FOLDER = "resources/images"


def default_model_path(profile: Profile) -> str:
    return f"resources/models/yolov3-tiny-{profile.height}x{profile.width}.onnx"


def load(config: dict) -> Settings:
    """Settings from a config that passed the schema (defaults filled in). Raises ConfigError."""
    preprocess = dict(config["preprocess"])
    name = preprocess.pop("profile")
    try:
        profile = resolve_profile(name, preprocess)
    except ValueError as err:
        raise ConfigError("preprocess", str(err)) from None

    default_images = config["images"] is None
    folder = DEFAULT_IMAGE_FOLDER if default_images else config["images"]
    if not default_images and not os.path.isdir(folder):
        raise ConfigError("images", f"folder {folder!r} does not exist")

    default_model = config["model"] is None
    model_path = default_model_path(profile) if default_model else config["model"]

    temporary = config["raws"] == "temporary"
    snpe = config["quantization"]["backend"] == "snpe"
    if temporary and snpe:
        raise ConfigError("raws", "the snpe backend reads the raws through the input list; keep them")

    labels = config["labels"]
    source = label_source(labels["source"], labels["yolo_dir"], labels["coco_json"])
    for key, needed, exists in (("yolo_dir", source == "yolo", os.path.isdir),
                                ("coco_json", source == "coco", os.path.isfile),
                                ("names", bool(labels["names"]), os.path.isfile)):
        if needed and not (labels[key] and exists(labels[key])):
            raise ConfigError(f"labels.{key}", f"{labels[key]!r} does not exist")

    evaluation = config["evaluation"]
    folder_given = evaluation["images"] is not None
    if folder_given and not os.path.isdir(evaluation["images"]):
        raise ConfigError("evaluation.images", f"folder {evaluation['images']!r} does not exist")
    if folder_given and evaluation["use_calibration_images"]:
        raise ConfigError("evaluation.use_calibration_images",
                          "cannot be true together with evaluation.images; choose one")
    holdout = 0.0 if folder_given or evaluation["use_calibration_images"] else evaluation["holdout"]

    quantization, target_section = config["quantization"], config["target"]
    try:
        target = resolve_target(target_section["runtime"], [str(s) for s in target_section["socs"]],
                                quantization["activations"], quantization["tail"], config["search"]["precision"],
                                quantization["reduce_range"])
    except TargetError as err:
        raise ConfigError(err.key, str(err).split(": ", 1)[1]) from None
    if config["search"]["backend"] == "htp" and not target.on_htp:
        raise ConfigError("search.backend", f"htp needs target.runtime: htp (it is {target.runtime})")
    on_htp = evaluation["on_htp"]
    if on_htp is True and not target.on_htp:
        raise ConfigError("evaluation.on_htp", f"needs target.runtime: htp (it is {target.runtime})")
    return Settings(config=config, image_folder=folder, default_images=default_images, model_path=model_path,
                    default_model=default_model, profile_name=name, profile_overrides=preprocess, profile=profile,
                    temporary_raws=temporary, snpe_backend=snpe, label_source=source,
                    evaluation_folder=evaluation["images"], holdout=holdout,
                    evaluate_on_calibration=evaluation["use_calibration_images"],
                    search=config["search"]["max_drop"] is not None and target.search_precision is not None,
                    target=target, evaluate_on_htp=target.on_htp if on_htp == "auto" else bool(on_htp))


def label_source(source: str, yolo_dir: str | None, coco_json: str | None) -> str:
    """The label source for `auto`: yolo when a YOLO folder is given, coco when a COCO JSON is, else the
    float model's own detections."""
    if source != "auto":
        return source
    return "yolo" if yolo_dir else "coco" if coco_json else "pseudo"


def check_user_config(config: dict) -> None:
    """Rules that need to know what the user wrote, not the defaults: run before the schema fills them."""
    evaluation = config.get("evaluation") or {}
    if isinstance(evaluation, dict) and evaluation.get("images") is not None and "holdout" in evaluation:
        raise ConfigError("evaluation.holdout", "has no effect with evaluation.images set (the folder is the "
                          "evaluation set); remove one of them")


CHECK_CACHE = ".snakemake/qcal/checked"


def once_per_file(path: str, check_name: str, check) -> None:
    """Run check(path) unless it passed before on this very file (same size, times and inode): a
    model check costs a second, every Snakemake invocation would pay it."""
    import hashlib

    info = os.stat(path)
    signature = f"{os.path.abspath(path)} {info.st_size} {info.st_mtime_ns} {info.st_ctime_ns} {info.st_ino}\n"
    marker = os.path.join(CHECK_CACHE, check_name + "-" + hashlib.sha256(signature.encode()).hexdigest()[:24])
    if os.path.isfile(marker):
        return
    check(path)
    from qcal.files import write_text

    write_text(marker, signature)


def read_schema(path: str | os.PathLike) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def check_environment(settings: Settings, workdir: str) -> None:
    """Checks that need more than the config (the model file, Qualcomm's tools, the project folder),
    run at start so no run fails after hours of raws for a reason known before."""
    config = settings.config
    if config["input_list"]["paths"] == "absolute" and any(ch.isspace() for ch in os.path.abspath(workdir)):
        raise ConfigError("input_list.paths", f"the project folder {os.path.abspath(workdir)!r} contains white "
                          "space, which SNPE input lists cannot hold; set input_list.paths: relative or move it")
    if not settings.default_model:
        from qcal.model import ModelError, check_model_file, check_runs_on_cpu

        try:
            check_model_file(settings.model_path, config["input_list"]["input_name"], settings.profile.height,
                             settings.profile.width)
            once_per_file(settings.model_path, "ort-cpu", check_runs_on_cpu)
        except ModelError as err:
            raise ConfigError("model", str(err)) from None
    if settings.target.on_htp:
        import importlib.util

        if importlib.util.find_spec("onnxruntime_qnn") is None:
            raise ConfigError("target.runtime", "the htp runtime checks and prepares the model with onnxruntime-qnn, "
                              "which is not installed: run `make` (it installs envs/requirements.txt), or "
                              "`pip install onnxruntime-qnn==2.7.0` (Linux x86_64, Windows arm64/x64)")
    if settings.snpe_backend:
        from qcal.snpe import SnpeError, check_raw_format, find_tools

        try:
            find_tools()
            check_raw_format(settings.profile.layout)
        except SnpeError as err:
            raise ConfigError("quantization.backend", str(err)) from None
