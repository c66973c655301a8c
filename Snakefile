# Placeholder: the SLURM/Snakemake description of the same DAG lands with the HPC issue.
# Until then, `dvc repro` is the way to run the pipeline.


rule all:
    shell:
        "dvc repro"
