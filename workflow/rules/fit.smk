# The fit stage of dvc.yaml in its parts, one per seed of replicates.seeds (src/litpipe/fanout.py names them,
# their commands and logs): rule `fit` trains the first seed (the stage's own outputs: models/best.ckpt,
# results/fit, tb/fit), and each further seed is a job of its own, fit_seed_S, writing its entries in dvc.yaml's
# replicate directories (paths.fit_run). Under DVC, `litpipe fit` runs them all, replicates.n_workers at once.
FIT = STAGES["fit"]


rule fit:
    input:
        dag.inputs(FIT, STAGES),
    output:
        outputs([path for path in FIT.results if Path(path) not in paths.REPLICATE_DIRS]),
    log:
        FIT.logs,
    benchmark:
        paths.benchmark_file("fit")
    params:
        tracked=dag.param_values(FIT, TRACKED),
        command=fanout.fit_seed(SEEDS[0], SEEDS).command,
    threads: cores("fit")
    resources:
        **fit_resources(),
    conda:
        ENVIRONMENT
    shell:
        fit_shell()


for replicate_seed, replicate in REPLICATES.items():

    rule:
        name:
            fanout.fit_seed(replicate_seed, SEEDS).rule
        input:
            dag.inputs(FIT, STAGES),
        output:
            replicate.checkpoint,
            directory(replicate.results),
            directory(replicate.tensorboard),
        log:
            replicate.log,
        benchmark:
            paths.benchmark_file(fanout.fit_seed(replicate_seed, SEEDS).rule)
        params:
            tracked=dag.param_values(FIT, TRACKED),
            # The shell line is formatted when the job runs, after this loop ended: values go through params.
            command=fanout.fit_seed(replicate_seed, SEEDS).command,
        threads: cores("fit")
        resources:
            **fit_resources(),
        conda:
            ENVIRONMENT
        shell:
            fit_shell()
