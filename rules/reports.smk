# Reports: is the calibration set good enough (coverage), and what did quantization cost (accuracy).


rule coverage:
    input:
        info="results/model/model_info.json",
        metas=calibration_sidecars,
        detections=coverage_label_inputs,
    output:
        tsv=report(
            "results/reports/coverage.tsv",
            caption="../report/coverage.rst",
            category="Calibration set",
        ),
        html=report(
            "results/reports/coverage.html",
            caption="../report/coverage.rst",
            category="Calibration set",
        ),
        json="results/reports/coverage.json",
        text="results/reports/coverage.txt",
    log:
        "results/logs/coverage.log",
    params:
        source=S.label_source,
        labels=config["labels"],
        settings=config["coverage"],
    resources:
        mem_mb=1000,
    run:
        jobs.coverage(input, output, params, log)


rule evaluate_accuracy:
    input:
        float_model="results/model/prepared.onnx",
        quant_model=SHIPPED_MODEL,
        summary="results/quantize_summary.json",
        info="results/model/model_info.json",
        coverage="results/reports/coverage.tsv",
        raws=test_raws,
        metas=test_sidecars,
        htp_checks=[f"results/htp/{soc.name}/check.json" for soc in S.target.socs] if S.evaluate_on_htp else [],
    output:
        tsv=report(
            "results/reports/accuracy.tsv",
            caption="../report/accuracy.rst",
            category="Accuracy",
        ),
        html=report(
            "results/reports/accuracy.html",
            caption="../report/accuracy.rst",
            category="Accuracy",
        ),
        json="results/reports/accuracy.json",
        text="results/reports/accuracy.txt",
    log:
        "results/logs/evaluate_accuracy.log",
    params:
        **PROFILE,
        source=S.label_source,
        labels=config["labels"],
        decoder=config["decoder"],
        flag_drop=config["evaluation"]["flag_drop"],
        target=S.target_params,
        htp_socs=[[soc.name, soc.soc_model] for soc in S.target.socs] if S.evaluate_on_htp else [],
    threads: S.threads("evaluation")
    resources:
        mem_mb=3000,
        runtime=60,
    run:
        jobs.evaluate_accuracy(input, output, params, threads, log)
