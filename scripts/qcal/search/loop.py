"""The search loop: quantize; while the int8 model disagrees with the float model by more than the
budget, move the layer with the largest measured effect out of int8 (NNCF's accuracy control and
AIMET's AutoQuant do the same)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcal.detections import DecoderSettings
from qcal.files import write_atomic
from qcal.images import unit_hash
from qcal.model import ModelInfo
from qcal.quantize import QuantizeOptions, activation_encodings, quantize_model, write_ort_ranges
from qcal.raws import InputSpec, RawItem
from qcal.search.layers import PRECISIONS, layer_change, rankable_layers
from qcal.search.scoring import Score, SearchImages, hardest, joined
from qcal.search.steps import SearchStep
from qcal.stats import TensorStats

RANKING_IMAGES = 32  # images the per-layer effects are measured on: those the int8 model gets most wrong


@dataclass(frozen=True)
class SearchSettings:
    max_drop: float           # budget: 1 - mAP50 agreement with the float model
    precision: str = "int16"  # what a layer leaving int8 becomes: int16 (A16W8) or float
    max_steps: int = 20       # at most this many layers tried
    max_minutes: float = 30.0  # no new step starts after this long (ranking included)
    backend: str = "cpu"      # where steps are scored: cpu (ONNX Runtime) or htp (the simulator)
    soc_model: str | None = None  # htp: the SoC simulated


def halves(items: list[RawItem]) -> tuple[list[int], list[int]]:
    """The search images split in two by a stable hash of each image: a layer stays out of int8 only
    when it helps on both, so that one lucky image cannot buy a layer (measured: a search that reported
    0.984 on its own images scored 0.81-0.95 on new photos)."""
    order = sorted(range(len(items)), key=lambda i: unit_hash(items[i].image, "search-halves"))
    first = sorted(order[0::2])  # alternate in hash order: the halves differ in size by one at most
    return first, sorted(order[1::2])


def search(prepared: str | Path, stats: dict[str, TensorStats], out: str | Path, options: QuantizeOptions,
           info: ModelInfo, items: list[RawItem], spec: InputSpec, decoder: DecoderSettings,
           settings: SearchSettings, threads: int = 1, progress: Callable[[str], None] = lambda line: None
           ) -> list[SearchStep]:
    """Quantize; if 1 - mAP50 agreement > max_drop, measure each layer's effect (the confidence SQNR it
    gives back when it alone moves to the search precision), then try layers, largest effect first: a
    layer stays out of int8 when the agreement improves on both halves of the search images, until the
    budget is met, max_steps layers were tried or max_minutes passed. Writes the model of the kept
    layers to out; returns every step (progress gets a line per step)."""
    precision, max_drop = settings.precision, settings.max_drop
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    started = time.monotonic()
    model = onnx.load(str(prepared))
    with tempfile.TemporaryDirectory(prefix="qcal-search-") as tmp:
        current, ranges = Path(tmp) / "step.onnx", Path(tmp) / "ranges.json"
        images = SearchImages(prepared, items, spec, decoder, tmp, threads, settings.backend, settings.soc_model)
        half_a, half_b = halves(items)

        def build(step_options: QuantizeOptions) -> None:
            # 16-bit tensors need 16-bit ranges (a wider clip than the 8-bit one), so ranges follow the step
            write_ort_ranges(activation_encodings(stats, step_options, info.tail_tensors, info.preactivations), ranges)
            quantize_model(prepared, ranges, current, step_options, info.tail_nodes, info.tail_tensors)

        def quantize(step_options: QuantizeOptions, indices: Sequence[int] | None = None,
                     backend: str | None = None) -> Score:
            build(step_options)
            return images.score(current, indices, backend)

        def out_of_time() -> bool:
            return time.monotonic() - started > 60 * settings.max_minutes

        def score_step(kept_halves: list[float]) -> tuple[Score | None, list[float | None]]:
            """The built model on every search image, or None when it already lost agreement on the half
            scored first (the one further from 1): the layer is refused whatever the other half gives, so
            that half is not scored. Same decisions as scoring both; a refused layer costs half a step."""
            parts = [half_a, half_b]
            first = 0 if kept_halves[0] <= kept_halves[1] else 1
            lead = images.score(current, parts[first])
            both: list[float | None] = [None, None]
            both[first] = lead.agreement
            if lead.agreement < kept_halves[first]:
                return None, both
            score = joined([(parts[first], lead), (parts[1 - first], images.score(current, parts[1 - first]))])
            return score, [score.agreement_on(half_a), score.agreement_on(half_b)]

        first = quantize(options)
        steps = [SearchStep("", "int8", first.agreement, 1 - first.agreement,
                            halves=[first.agreement_on(half_a), first.agreement_on(half_b)])]
        progress(f"step 0: all layers int8: agreement {first.agreement:.3f}")
        if 1 - first.agreement > max_drop:
            layers = rankable_layers(model, set(options.exclude_nodes) | set(info.tail_nodes))
            # Ranking scores every layer, so it runs on a few dozen images: those whose detections the int8
            # model gets most wrong. Images it already gets right cannot show which layer fixes a detection
            # (measured: on images spread evenly, the layer whose step gained most agreement ranked last).
            hard = hardest(first.detection_errors, RANKING_IMAGES)
            if settings.backend == "cpu":
                base_db = first.confidence_db(hard)
            else:  # the layers' effects are measured on the CPU (below), so their baseline is too
                base_db = images.score(current, hard, "cpu").confidence_db()
            effect = {}
            for layer in layers:
                if out_of_time():
                    break
                # ranking only orders the layers, so it runs on the CPU even when steps are scored on the HTP
                effect[layer] = quantize(layer_change(model, layer, precision, options), hard,
                                         "cpu").confidence_db() - base_db
            progress(f"ranked {len(effect)} of {len(layers)} layers by their effect on the {len(hard)} hardest images")
            kept_options, kept_halves, built_kept = options, steps[0].halves, True
            for layer in sorted(effect, key=lambda name: -effect[name])[:settings.max_steps]:
                if out_of_time():
                    progress(f"stopped: the search's time budget ({settings.max_minutes} min) is spent")
                    break
                candidate = layer_change(model, layer, precision, kept_options)
                build(candidate)
                score, both = score_step(kept_halves)
                keep = (score is not None and all(new >= old for new, old in zip(both, kept_halves))
                        and sum(both) > sum(kept_halves))
                agreement = None if score is None else score.agreement
                steps.append(SearchStep(layer, precision, agreement, None if score is None else 1 - agreement,
                                        effect_db=effect[layer], halves=both, kept=keep))
                built_kept = keep
                if keep:
                    kept_options, kept_halves = candidate, both
                progress(f"step {len(steps) - 1}: {steps[-1].describe()}: {steps[-1].agreement_text()}")
                if keep and 1 - score.agreement <= max_drop:
                    break
            if not built_kept:
                build(kept_options)  # the last model built tried a layer that was rejected
        del images  # release the memory map before its folder goes
        write_atomic(out, current.read_bytes())
    return steps
