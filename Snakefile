# The DAG of dvc.yaml, for clusters: workflow/rules/stages.smk builds one rule per stage from it
# (src/litpipe/dag.py), search.smk and fit.smk one job per part of the stages that run in parts (the search's
# workers, the fit's seeds; src/litpipe/fanout.py names them), and common.smk holds the little a cluster adds
# (resources, which grow with each retry, and submit-host stages). Every rule writes its wall time and peak
# memory to results/timing/benchmarks/<rule>.tsv (its `benchmark:`). Add or change a stage in dvc.yaml only.
#
#   snakemake --cores 2            run locally
#   snakemake --profile slurm      submit every compute rule to SLURM (profile: ./slurm)
#
# params.yaml is litpipe's own config, validated before anything is scheduled; `--config` is refused.


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/fit.smk"


rule all:
    default_target: True
    input:
        per_seed([path for stage in STAGES.values() for path in stage.results]),
