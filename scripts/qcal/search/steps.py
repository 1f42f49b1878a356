"""The record of an accuracy search: one step per layer moved out of int8, and how to read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SearchStep:
    layer: str          # "" for the starting point
    precision: str
    map50_agreement: float | None  # on every search image, with this step's layer (kept or not); None: the
    drop: float | None             # layer lost agreement on the half scored first, the other was not scored
    effect_db: float | None = None  # confidence SQNR this layer gave back on its own, which ranked it
    halves: list[float | None] | None = None  # agreement on each half of the search images (None: not scored)
    kept: bool = True   # the layer stays out of int8: it helped on both halves

    def describe(self) -> str:
        if not self.layer:
            return "all layers int8"
        effect = f" (alone: {self.effect_db:+.2f} dB confidence SQNR)" if self.effect_db is not None else ""
        halves = ("; halves " + " / ".join("not scored" if h is None else f"{h:.3f}" for h in self.halves)
                  if self.halves else "")
        verdict = ("" if self.kept else ": rejected, worse on the half scored first" if self.map50_agreement is None
                   else ": rejected, it did not help on both halves of the search images")
        return f"{self.layer} (and its activation) in {self.precision}{effect}{halves}{verdict}"

    def agreement_text(self) -> str:
        if self.map50_agreement is None:
            return "the other half not scored"
        return f"agreement {self.map50_agreement:.3f} (drop {self.drop:.3f})"


def layers_kept(steps: list[SearchStep]) -> int:
    return sum(1 for step in steps[1:] if step.kept)


def final_agreement(steps: list[SearchStep]) -> float:
    """The agreement of the model the search ships: its last kept step's."""
    return next(step.map50_agreement for step in reversed(steps) if step.kept)
