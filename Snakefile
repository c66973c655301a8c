# The same DAG as dvc.yaml, for clusters: each rule calls the same `litpipe <stage>` command and
# declares the same outputs (tests/test_workflow.py checks that the two cannot drift apart).
#
#   snakemake --cores 2            run locally
#   snakemake --profile slurm      submit every compute rule to SLURM (profile: ./slurm)
#
# params.yaml is the config; litpipe validates it before anything is scheduled.

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/checks.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/analysis.smk"


rule all:
    default_target: True
    input:
        "reports/report.html",
        "results/test/metrics.json",
