"""Scoring a candidate model against the float model on the search images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qcal.detections import (LOW_CONF, APAccumulator, DecoderSettings, Detections, confidence, decode,
                             scale_detections, sqnr_from_energy)
from qcal.raws import InputSpec, RawItem
from qcal.runtime import cpu_session, runner


class Score(NamedTuple):
    agreement: float            # mAP50 of the quantized detections against the float ones
    signal: np.ndarray          # per image: energy of the float model's objectness x class
    noise: np.ndarray           # per image: squared error of the quantized model's objectness x class
    detection_errors: np.ndarray  # per image: the part of noise where either model reaches conf
    accumulator: APAccumulator | None = None  # per-image matches, for the agreement on a subset

    def agreement_on(self, images: Sequence[int]) -> float:
        """mAP50 agreement on the images at these positions (of those scored); 1.0 where they hold no
        float detection (nothing to lose)."""
        if self.accumulator is None:
            return self.agreement
        value = self.accumulator.resampled(list(images)).result()["map50"]
        return 1.0 if value is None else value

    def confidence_db(self, images: Sequence[int] | None = None) -> float:
        """Confidence SQNR pooled over every image scored, or over those at positions `images`."""
        chosen = slice(None) if images is None else list(images)
        return sqnr_from_energy(float(np.sum(self.signal[chosen])), float(np.sum(self.noise[chosen])))


class SearchImages:
    """The search images with the float model's outputs, computed once and kept on disk (YOLOv5s at 640
    gives 8.6 MB per image), and its detections at the deployment threshold: the truth every step is
    scored against. Each step then runs only the quantized model."""

    def __init__(self, prepared: str | Path, items: list[RawItem], spec: InputSpec, decoder: DecoderSettings,
                 folder: str | Path, threads: int = 1, backend: str = "cpu", soc_model: str | None = None) -> None:
        self.items, self.spec, self.decoder, self.threads = items, spec, decoder, threads
        self.backend, self.soc_model, self.folder = backend, soc_model, Path(folder)
        self.outputs: np.ndarray | None = None
        self.truth: list[Detections] = []
        # the float model is the truth on every backend: it runs on the CPU (the HTP runs quantized models only)
        for i, y in self._run_on_cpu(prepared, range(len(items))):
            if self.outputs is None:
                self.outputs = np.lib.format.open_memmap(self.folder / "float_outputs.npy", mode="w+",
                                                         dtype=np.float32, shape=(len(items), *y.shape))
            self.outputs[i] = y
            self.truth.append(scale_detections(decode(y, decoder.conf_threshold, decoder.iou_threshold),
                                               items[i].letterbox))

    def _run_on_cpu(self, model: str | Path, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        run = runner(cpu_session(model, self.threads))
        for i in indices:
            yield i, run(self.spec.read(self.items[i].raw))

    def _run(self, model: str | Path, indices: Sequence[int], backend: str) -> Iterator[tuple[int, np.ndarray]]:
        """The quantized model's outputs on a backend."""
        if backend == "cpu":
            yield from self._run_on_cpu(model, indices)
            return
        from qcal.htp import outputs_on_htp

        indices = list(indices)
        outputs, _ = outputs_on_htp(model, self.soc_model, [self.items[i].raw for i in indices], self.spec.to_json(),
                                    self.folder / "htp_outputs.npy")
        yield from zip(indices, outputs)  # rows of the memory map: one image in memory at a time

    def score(self, quantized: str | Path, indices: Sequence[int] | None = None, backend: str | None = None) -> Score:
        """A quantized model against the float model, on every image or on those at `indices`, on the
        search's backend unless another is named."""
        indices = range(len(self.items)) if indices is None else indices
        conf = self.decoder.conf_threshold
        agreement = APAccumulator()
        signal, noise, errors = [], [], []
        for i, y in self._run(quantized, indices, backend or self.backend):
            truth = self.truth[i]
            agreement.add(scale_detections(decode(y, LOW_CONF, self.decoder.iou_threshold), self.items[i].letterbox),
                          truth.boxes, truth.classes)
            reference, scores = confidence(self.outputs[i]).astype(np.float64), confidence(y)
            squared = (reference - scores) ** 2
            signal.append(float(np.sum(reference ** 2)))
            noise.append(float(np.sum(squared)))
            errors.append(float(np.sum(squared[(reference >= conf) | (scores >= conf)])))
        map50 = agreement.result()["map50"]
        return Score(1.0 if map50 is None else map50, np.asarray(signal), np.asarray(noise), np.asarray(errors),
                     agreement)


def joined(parts: Sequence[tuple[Sequence[int], Score]]) -> Score:
    """One Score from Scores of disjoint sets of search images (each over its indices, in that order),
    the images in index order: exactly what scoring them all at once gives."""
    picks = sorted(((index, score, position) for indices, score in parts for position, index in enumerate(indices)),
                   key=lambda pick: pick[0])
    accumulator = APAccumulator.gathered((score.accumulator, position) for _, score, position in picks)

    def column(name: str) -> np.ndarray:
        return np.asarray([getattr(score, name)[position] for _, score, position in picks], dtype=np.float64)

    map50 = accumulator.result()["map50"]
    return Score(1.0 if map50 is None else map50, column("signal"), column("noise"), column("detection_errors"),
                 accumulator)


def hardest(errors: np.ndarray, n: int) -> list[int]:
    """Indices of the n images with the largest detection error, in list order."""
    return sorted(np.argsort(-errors, kind="stable")[:n].tolist())
