# The search stage of dvc.yaml, fanned out: setup creates or resumes the study, N worker jobs share
# it through the journal file (or database) on the shared filesystem, and `search` collects the
# results. Its persistent outputs (the journal, tb/search) are not declared: Snakemake would delete
# them before a re-run, and they are what a re-run resumes from (dvc.yaml keeps them with `persist: true`).
SEARCH = STAGES["search"]


rule search_setup:
    input:
        dag.inputs(SEARCH, STAGES),
    output:
        touch("results/search/jobs/setup.done"),
    log:
        "logs/search-setup.log",
    params:
        tracked=dag.param_values(SEARCH, TRACKED),
    localrule: True
    conda:
        ENVIRONMENT
    shell:
        f"{SEARCH.cmd} --part setup"


rule search_worker:
    input:
        "results/search/jobs/setup.done",
    output:
        touch("results/search/jobs/worker{index}.done"),
    log:
        "logs/search-worker{index}.log",
    threads: cores("search_worker")
    resources:
        **resources("search_worker"),
    conda:
        ENVIRONMENT
    shell:
        f"{SEARCH.cmd} --part worker --worker {{wildcards.index}}"


rule search:
    input:
        expand("results/search/jobs/worker{index}.done", index=SEARCH_WORKERS),
    output:
        outputs(SEARCH.results),
    log:
        SEARCH.logs,
    threads: cores("search")
    resources:
        **resources("search"),
    conda:
        ENVIRONMENT
    shell:
        f"{SEARCH.cmd} --part collect"
