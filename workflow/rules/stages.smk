# One rule per stage of dvc.yaml (except those fanned out into jobs: search.smk, fit.smk): the same
# command, inputs (source files included), outputs and tracked params, read from there at parse time.

for stage in STAGES.values():
    if stage.name in ("search", "fit"):
        continue

    rule:
        name:
            stage.name
        input:
            per_seed(dag.inputs(stage, STAGES)),
        output:
            outputs(stage.results),
        log:
            stage.logs,
        benchmark:
            paths.benchmark_file(stage.name)
        params:
            tracked=dag.param_values(stage, TRACKED),
            # The shell line is formatted when the job runs, after this loop ended: values go through params.
            command=stage.cmd,
        threads: cores(stage.name)
        resources:
            **resources(stage.name),
        localrule: stage.name in LOCAL
        conda:
            ENVIRONMENT
        shell:
            "{params.command}"
