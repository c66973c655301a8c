# Cheap checks before the expensive search: can the model learn, and at what learning rate.


rule sanity:
    input:
        "data/prepared",
    output:
        directory("results/sanity"),
        directory("tb/sanity"),
        "results/timing/sanity.json",
    log:
        "logs/sanity.log",
    params:
        settings=PARAMS.model_dump(include={"seed", "model", "optim", "train", "sanity"}),
    threads: cores("train")
    resources:
        **resources("train"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe sanity"


rule lr_find:
    input:
        "data/prepared",
    output:
        directory("results/lr_find"),
        directory("tb/lr_find"),
        "results/timing/lr_find.json",
    log:
        "logs/lr_find.log",
    params:
        settings=PARAMS.model_dump(include={"seed", "model", "optim", "train", "lr_find"}),
    threads: cores("train")
    resources:
        **resources("train"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe lr_find"
