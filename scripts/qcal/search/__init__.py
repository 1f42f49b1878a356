"""Accuracy-aware mixed precision, kept apart as NNCF's accuracy control does: which nodes make a layer
(layers), how a candidate model is scored against the float one (scoring), and the stepping loop
(loop). steps holds the record of a search, which the reports read without importing the engine."""
