# The search fans out: setup creates or resumes the study, N worker jobs share it through the
# journal file (or database) on the shared filesystem, and `search` collects the results.
# The journal and tb/search are not declared outputs: Snakemake would delete them before a
# re-run, and they are what a re-run resumes from (dvc.yaml keeps them with `persist: true`).
localrules:
    search_setup,


rule search_setup:
    input:
        "data/prepared",
        "results/sanity",
        "results/lr_find",
    output:
        touch("results/search/jobs/setup.done"),
    log:
        "logs/search-setup.log",
    params:
        settings=PARAMS.model_dump(include={"seed", "model", "optim", "train", "search"}),
    conda:
        ENVIRONMENT
    shell:
        "litpipe search --part setup"


rule search_worker:
    input:
        "results/search/jobs/setup.done",
    output:
        touch("results/search/jobs/worker{index}.done"),
    log:
        "logs/search-worker{index}.log",
    threads: cores("worker")
    resources:
        **resources("worker"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe search --part worker --worker {wildcards.index}"


rule search:
    input:
        expand("results/search/jobs/worker{index}.done", index=SEARCH_WORKERS),
    output:
        "results/search/trials.csv",
        "results/search/best.json",
        "results/search/history.png",
        "results/search/importances.png",
        "results/search/parallel_coordinates.png",
        "results/search/slice.png",
        "results/timing/search.json",
    log:
        "logs/search.log",
    threads: cores("light")
    resources:
        **resources("light"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe search --part collect"
