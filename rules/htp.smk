# Qualcomm's HTP (target.runtime: htp): every node must run there (checked per SoC on onnxruntime-qnn's
# simulator), and each SoC gets its offline-prepared context binary, the graph a device loads as it is.
# Both come from one graph preparation in one job per SoC: changing target.socs reruns only the SoCs
# that changed.


rule htp_prepare:
    input:
        model="results/model_quantized.onnx",
    output:
        check="results/htp/{soc}/check.json",
        context="results/htp/{soc}/model_ctx.onnx",
    log:
        "results/logs/htp/{soc}.log",
    params:
        soc_model=soc_model_of,
    wildcard_constraints:
        soc=r"[A-Z0-9]+",
    resources:
        mem_mb=3000,
        runtime=30,
    run:
        jobs.htp_prepare(input, output, params, log)
