"""Reports: coverage (is the calibration set good enough), accuracy (what quantization cost) and the
quantization summary, as TSV/JSON/text/HTML. They read what the engine wrote; they never run it."""
