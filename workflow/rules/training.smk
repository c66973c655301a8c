# The final fit with the best searched params, and its test in a fresh process.


rule fit:
    input:
        "data/prepared",
        "results/search/best.json",
    output:
        "models/best.ckpt",
        "results/fit/history.csv",
        "results/fit/activations.csv",
        "results/fit/curves.png",
        "results/fit/summary.json",
        "results/fit/metrics.json",
        directory("tb/fit"),
        "results/timing/fit.json",
    log:
        "logs/fit.log",
    params:
        settings=PARAMS.model_dump(include={"seed", "model", "optim", "train", "observe"}),
    threads: cores("train")
    resources:
        # SIGUSR1 two minutes before the time limit: fit saves models/resume.ckpt and stops; a
        # re-run (or --retries) resumes from it.
        slurm_extra="--signal=USR1@120",
        **resources("train"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe fit"


rule test:
    input:
        "data/prepared",
        "models/best.ckpt",
    output:
        "results/test/metrics.json",
        "results/timing/test.json",
    log:
        "logs/test.log",
    threads: cores("light")
    resources:
        **resources("light"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe test"
