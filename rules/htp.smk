# Qualcomm's HTP (target.runtime: htp): every node must run there (checked per SoC on onnxruntime-qnn's
# simulator), and each SoC gets its offline-prepared context binary, the graph a device loads as it is.
# One job per SoC: changing target.socs reruns only the SoCs that changed.


rule htp_check:
    input:
        model="results/model_quantized.onnx",
    output:
        "results/htp/{soc}/check.json",
    log:
        "results/logs/htp/{soc}-check.log",
    params:
        soc_model=soc_model_of,
    wildcard_constraints:
        soc=r"[A-Z0-9]+",
    resources:
        mem_mb=3000,
        runtime=30,
    run:
        jobs.htp_check(input, output, params, log)


rule context_binary:
    input:
        model="results/model_quantized.onnx",
        check="results/htp/{soc}/check.json",
    output:
        "results/htp/{soc}/model_ctx.onnx",
    log:
        "results/logs/htp/{soc}-context.log",
    params:
        soc_model=soc_model_of,
    wildcard_constraints:
        soc=r"[A-Z0-9]+",
    resources:
        mem_mb=3000,
        runtime=30,
    run:
        jobs.context_binary(input, output, params, log)
