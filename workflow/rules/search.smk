# The search stage of dvc.yaml in its parts (src/litpipe/fanout.py names them, their commands and logs): setup
# creates or resumes the study, one job per worker of search.n_workers takes its trials through the journal
# file (or database) on the shared filesystem, a job per best configuration and seed trains it again
# (search.reevaluate_top_k), and collect writes the stage's outputs. Its persistent outputs
# (the journal, tb/search) are not declared: Snakemake would delete them before a re-run, and they are what a
# re-run resumes from (dvc.yaml keeps them with `persist: true`).
SEARCH = STAGES["search"]
SETUP, COLLECT = fanout.search_setup(), fanout.search_collect()


rule search_setup:
    input:
        dag.inputs(SEARCH, STAGES),
    output:
        touch(SETUP.marker),
    log:
        SETUP.log,
    benchmark:
        paths.benchmark_file(SETUP.rule)
    params:
        tracked=dag.param_values(SEARCH, TRACKED),
    localrule: True
    conda:
        ENVIRONMENT
    shell:
        SETUP.command


for worker in fanout.search_workers(PARAMS):

    rule:
        name:
            worker.rule
        input:
            SETUP.marker,
        output:
            touch(worker.marker),
        log:
            worker.log,
        benchmark:
            paths.benchmark_file(worker.rule)
        params:
            # The shell line is formatted when the job runs, after this loop ended: values go through params.
            command=worker.command,
        threads: cores("search_worker")
        resources:
            **resources("search_worker"),
        conda:
            ENVIRONMENT
        shell:
            "{params.command}"


# With search.reevaluate_top_k, each of the best configurations once per seed of replicates.seeds, a job each, once
# every worker is done (the candidates are the study's best trials then); its marker holds its result.
for part in fanout.search_reevaluations(PARAMS):

    rule:
        name:
            part.rule
        input:
            [worker.marker for worker in fanout.search_workers(PARAMS)],
        output:
            part.marker,
        log:
            part.log,
        benchmark:
            paths.benchmark_file(part.rule)
        params:
            command=part.command,
        threads: cores("search_worker")
        resources:
            **resources("search_worker"),
        conda:
            ENVIRONMENT
        shell:
            "{params.command}"


rule search:
    input:
        [part.marker for part in fanout.search_workers(PARAMS) + fanout.search_reevaluations(PARAMS)],
    output:
        outputs(SEARCH.results),
    log:
        SEARCH.logs,
    benchmark:
        paths.benchmark_file("search")
    threads: cores("search")
    resources:
        **resources("search"),
    conda:
        ENVIRONMENT
    shell:
        COLLECT.command
