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
        **PROFILE,
        histogram_bins=config["calibration"]["histogram_bins"],
        decoder=config["decoder"],
    wildcard_constraints:
        shard=r"\d+",
    threads: S.threads("calibration")
    resources:
        mem_mb=3000,
        runtime=60,
    run:
        jobs.calibrate_shard(input, output, params, threads, log)


rule merge_calibration:
    input:
        expand("results/calibration/shard-{shard}.npz", shard=range(config["calibration"]["shards"])),
    output:
        "results/calibration/stats.npz",
    log:
        "results/logs/calibration/merge.log",
    resources:
        mem_mb=2000,
    run:
        jobs.merge_calibration(input, output, log)


rule ranges:
    input:
        stats="results/calibration/stats.npz",
        info="results/model/model_info.json",
    output:
        "results/calibration/ranges.json",
    log:
        "results/logs/calibration/ranges.log",
    params:
        quantization=S.quantization_params,
    resources:
        mem_mb=2000,
    run:
        jobs.ranges(input, output, params, log)


rule quantize_model:
    input:
        model="results/model/prepared.onnx",
        info="results/model/model_info.json",
        ranges="results/calibration/ranges.json",
        stats="results/calibration/stats.npz",
        eval_raws=search_evaluation_raws("raw"),
        eval_metas=search_evaluation_raws("json"),
        calibration_raws=search_calibration_raws("raw"),
        calibration_metas=search_calibration_raws("json"),
    output:
        model="results/model_quantized.onnx" if S.target.quantized_model else temp("results/model_quantized.onnx"),
        encodings="results/encodings.json",  # AIMET/QNN format 0.6.1 (SNPE's --quantization_overrides)
        encodings_v1="results/encodings-1.0.0.json",  # format 1.0.0, AIMET's and QNN's default now
        summary="results/quantize_summary.json",
        text="results/quantize_summary.txt",
    log:
        "results/logs/quantize_model.log",
    params:
        **PROFILE,
        quantization=S.quantization_params,
        search=S.search_params,
        decoder=config["decoder"],
        target=S.target_params,
    threads: S.threads("search")
    resources:
        mem_mb=4000,
    run:
        jobs.quantize_model(input, output, params, threads, log)


rule weights_dequantized:
    input:
        "results/model_quantized.onnx",
    output:
        "results/model_weights_dequantized.onnx",
    log:
        "results/logs/weights_dequantized.log",
    resources:
        mem_mb=2000,
    run:
        jobs.weights_dequantized(input, output, log)
