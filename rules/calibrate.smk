# Calibration as map (one job per shard of images) and reduce (exact merge), then ranges and QDQ.


rule calibrate_shard:
    input:
        model="results/model/prepared.onnx",
        info="results/model/model_info.json",
        raws=shard_raws,
        metas=shard_sidecars,
    output:
        stats="results/calibration/shard-{shard}.npz",
        detections="results/calibration/shard-{shard}.detections.tsv",
    log:
        "results/logs/calibration/shard-{shard}.log",
    params:
        entry="qcal.calibrate:run_shard_from_snakemake",
        profile=PROFILE_NAME,
        settings=PROFILE_SETTINGS,
        max_bins=config["calibration"]["histogram_bins"],
        conf=config["labels"]["conf_threshold"],
        iou=config["labels"]["iou_threshold"],
    wildcard_constraints:
        shard=r"\d+",
    threads: config["calibration"]["threads"]
    resources:
        mem_mb=3000,
        runtime=60,
    conda:
        "../envs/qcal.yaml"
    script:
        "../scripts/entry.py"


rule merge_calibration:
    input:
        expand("results/calibration/shard-{shard}.npz", shard=range(config["calibration"]["shards"])),
    output:
        "results/calibration/stats.npz",
    log:
        "results/logs/calibration/merge.log",
    params:
        entry="qcal.calibrate:run_merge_from_snakemake",
    resources:
        mem_mb=2000,
    conda:
        "../envs/qcal.yaml"
    script:
        "../scripts/entry.py"


rule ranges:
    input:
        stats="results/calibration/stats.npz",
        info="results/model/model_info.json",
    output:
        "results/calibration/ranges.json",
    log:
        "results/logs/calibration/ranges.log",
    params:
        entry="qcal.quantize:run_ranges_from_snakemake",
        quantization=config["quantization"],
    resources:
        mem_mb=2000,
    conda:
        "../envs/qcal.yaml"
    script:
        "../scripts/entry.py"


rule quantize_model:
    input:
        model="results/model/prepared.onnx",
        info="results/model/model_info.json",
        ranges="results/calibration/ranges.json",
        stats="results/calibration/stats.npz",
        eval_raws=lambda w: search_raws("raw"),
        eval_metas=lambda w: search_raws("json"),
        calibration_raws=lambda w: search_calibration_raws("raw"),
        calibration_metas=lambda w: search_calibration_raws("json"),
    output:
        model="results/model_quantized.onnx",
        encodings="results/encodings.json",
        summary="results/quantize_summary.json",
        text="results/quantize_summary.txt",
    log:
        "results/logs/quantize_model.log",
    params:
        entry="qcal.quantize:run_quantize_from_snakemake",
        quantization=config["quantization"],
        profile=PROFILE_NAME,
        settings=PROFILE_SETTINGS,
        conf=LABELS["conf_threshold"],
        iou=LABELS["iou_threshold"],
    threads: EVALUATION["threads"]  # the accuracy search runs the model as the evaluation does
    resources:
        mem_mb=4000,
    conda:
        "../envs/qcal.yaml"
    script:
        "../scripts/entry.py"
