"""Which file each job reads and writes: the image folders listed once, split once (calibration /
evaluation, shards, the search's sample), their raw paths, and their content digests. Pure Python on
lists of paths; the Snakefile's input functions only look things up here.

Parse-time code: no heavy imports."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from qcal.errors import QcalError
from qcal.images import Unusable, content_digests, is_held_out, raw_stem, scan_images, search_sample, shard_of

CALIBRATION_RAWS = "results/raw"
EVALUATION_RAWS = "results/eval_raw"  # a separate evaluation folder's raws
# A cache (deleting it costs one re-hash), kept with Snakemake's own bookkeeping, not among the outputs.
DIGEST_CACHE = ".snakemake/qcal/digests-{kind}.tsv"


class PlanError(QcalError):
    pass


@dataclass(frozen=True)
class FolderPlan:
    """One image folder: its usable images, their raw names, and what could not be used."""

    root: str
    images: list[str]
    unusable: list[Unusable]
    stems: dict[str, str]   # image -> raw stem

    @classmethod
    def scan(cls, root: str, on_bad_image: str, what: str) -> FolderPlan:
        found = scan_images(root)
        if found.unusable and on_bad_image == "fail":
            first = found.unusable[0]
            more = f" (and {len(found.unusable) - 1} more)" if len(found.unusable) > 1 else ""
            raise PlanError(f"{os.path.join(root, first.path)}: {first.reason}{more}; "
                            "or set on_bad_image: skip to leave such files out")
        if not found.images:
            raise PlanError(f"config key '{what}': no .jpg/.jpeg/.png files under {root!r}")
        stems = {image: raw_stem(image) for image in found.images}
        check_stems(root, stems)
        return cls(root, found.images, found.unusable, stems)

    def image_of(self, stem: str) -> str:
        return self._image_of_stem[stem]

    @cached_property
    def _image_of_stem(self) -> dict[str, str]:
        return {stem: image for image, stem in self.stems.items()}


def check_stems(root: str, stems: dict[str, str]) -> None:
    """Refuse names whose raws could not be written side by side: two images with one raw name, or a
    raw file where another image's raw folder must be (image 'a.jpg' beside a folder 'a.jpg.raw/')."""
    owner: dict[str, str] = {}
    for image, stem in stems.items():
        if stem in owner:
            raise PlanError(f"{os.path.join(root, image)} and {os.path.join(root, owner[stem])} would share the raw "
                            f"name {stem!r}: rename one of them")
        owner[stem] = image
    outputs = {f"{stem}.{ext}": image for image, stem in stems.items() for ext in ("raw", "json")}
    for image, stem in stems.items():
        parts = stem.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in outputs:
                raise PlanError(f"{os.path.join(root, image)} lies in a folder named like the raw of "
                                f"{os.path.join(root, outputs[folder])}: rename the folder {folder!r}")


@dataclass
class Plan:
    """Every image decision of one workflow run, made once per DAG build."""

    calibration_folder: FolderPlan
    evaluation_folder: FolderPlan | None   # a separate folder, else evaluation images are held out
    holdout: float
    evaluate_on_calibration: bool
    shards: int
    search_sample_size: int
    search_share: float = 0.0   # of the evaluation images, the share the accuracy search may use (0: no search)

    @cached_property
    def calibration_images(self) -> list[str]:
        images = [i for i in self.calibration_folder.images if not is_held_out(i, self.holdout)]
        if not images:
            raise PlanError(f"config key 'evaluation.holdout': all {len(self.calibration_folder.images)} images "
                            f"were held out for evaluation; lower it")
        return images

    @cached_property
    def held_out_images(self) -> list[str]:
        return [i for i in self.calibration_folder.images if is_held_out(i, self.holdout)]

    def raws(self, images: list[str], ext: str, folder: str = CALIBRATION_RAWS,
             plan: FolderPlan | None = None) -> list[str]:
        stems = (plan or self.calibration_folder).stems
        return [f"{folder}/{stems[i]}.{ext}" for i in images]

    def calibration_raws(self, ext: str) -> list[str]:
        return self.raws(self.calibration_images, ext)

    def _evaluation_pool(self) -> tuple[list[str], str, FolderPlan]:
        """The images set aside from calibration, their raws folder and their folder."""
        if self.evaluation_folder is not None:
            return self.evaluation_folder.images, EVALUATION_RAWS, self.evaluation_folder
        if self.evaluate_on_calibration:
            return self.calibration_images, CALIBRATION_RAWS, self.calibration_folder
        return self.held_out_images, CALIBRATION_RAWS, self.calibration_folder

    @cached_property
    def _search_and_test(self) -> tuple[list[str], list[str]]:
        """The evaluation images split once, by a stable hash, into those the search tunes on and those
        that grade the result: no image grades a stage that was tuned on it. At least one test image."""
        pool, _, _ = self._evaluation_pool()
        search = [i for i in pool if is_held_out(i, self.search_share, salt="search-or-test")]
        if len(search) == len(pool) and pool:
            search = search[:-1]
        return search, [i for i in pool if i not in set(search)]

    def evaluation_raws(self, ext: str) -> list[str]:
        """Every evaluation image (search and test): their raws are built and reported together."""
        pool, folder, plan = self._evaluation_pool()
        return self.raws(pool, ext, folder, plan)

    def search_raws(self, ext: str) -> list[str]:
        _, folder, plan = self._evaluation_pool()
        return self.raws(self._search_and_test[0], ext, folder, plan)

    def test_raws(self, ext: str) -> list[str]:
        _, folder, plan = self._evaluation_pool()
        return self.raws(self._search_and_test[1], ext, folder, plan)

    @cached_property
    def _shards(self) -> dict[int, list[str]]:
        shards: dict[int, list[str]] = {}
        for image in self.calibration_images:
            shards.setdefault(shard_of(image, self.shards), []).append(image)
        return shards

    def shard_raws(self, shard: int, ext: str) -> list[str]:
        return self.raws(self._shards.get(int(shard), []), ext)

    def search_calibration_raws(self, ext: str) -> list[str]:
        return self.raws(search_sample(self.calibration_images, self.search_sample_size), ext)

    def unusable(self) -> list[Unusable]:
        """Files left out before any job ran (on_bad_image: skip), from both folders."""
        found = list(self.calibration_folder.unusable)
        if self.evaluation_folder is not None:
            found += self.evaluation_folder.unusable
        return found


def folder_digests(plan: FolderPlan, kind: str) -> dict[str, str]:
    """Content digests of a folder's images (see qcal.images.content_digests); `kind` names its cache."""
    return content_digests(plan.root, plan.images, DIGEST_CACHE.format(kind=kind))
