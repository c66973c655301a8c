# Data preparation runs on the submit host: compute nodes often have no internet for downloads.
localrules:
    prepare,


rule prepare:
    output:
        directory("data/prepared"),
        "results/timing/prepare.json",
    log:
        "logs/prepare.log",
    params:
        data=PARAMS.data.model_dump(),
    conda:
        ENVIRONMENT
    shell:
        "litpipe prepare"
