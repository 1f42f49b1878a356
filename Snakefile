# qcal: calibrate and quantize ONNX detectors for SNPE/QNN and ONNX Runtime. See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/images.smk"
include: "rules/model.smk"
include: "rules/calibrate.smk"
include: "rules/snpe.smk"
include: "rules/htp.smk"
include: "rules/reports.smk"


QUANTIZED = [
    "results/input_list.txt",
    SHIPPED_MODEL,
    "results/encodings.json",
    "results/quantize_summary.json",
    "results/reports/coverage.html",
    "results/reports/skipped_images.tsv",
] + (["results/model_quantized.dlc"] if S.snpe_backend else []) + HTP_OUTPUTS


ACCURACY = ["results/reports/accuracy.html"]


rule all:
    input:
        QUANTIZED,
        ACCURACY,
    default_target: True


rule evaluate:
    input:
        ACCURACY,


rule quantize:
    input:
        QUANTIZED,


onstart:
    jobs.remove_stale_temporaries("results")


onsuccess:
    # The summaries a user should read, once, at the end of the run (jobs' own prints scroll away).
    print(jobs.final_summary("results", [soc.name for soc in S.target.socs]), end="")
