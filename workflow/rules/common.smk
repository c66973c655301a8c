# What a cluster adds to the DAG of dvc.yaml, in one place: params validation, where jobs go, the
# resources of each stage, which stages run on the submit host, and the helpers the other rule files share.
import os
from pathlib import Path

from litpipe import dag, fanout, paths
from litpipe.config import load_params
from litpipe.errors import ConfigError

try:
    PARAMS = load_params("params.yaml")  # the same validation every litpipe command does
except ConfigError as error:
    raise WorkflowError(f"litpipe: {error}")

if config:  # nothing reads Snakemake's config: a value given there would silently not count
    raise WorkflowError(
        "litpipe: snakemake --config is not read; set values in params.yaml (or run `dvc exp run -S key=value`)"
    )

STAGES = dag.load()
TRACKED = PARAMS.model_dump()  # the values behind each stage's tracked keys: a changed one re-runs the stage
SEEDS = PARAMS.replicates.seeds
REPLICATES = {seed: paths.fit_run(seed, SEEDS) for seed in SEEDS[1:]}  # the fits after the first seed's

# Every rule runs the litpipe CLI from the environment Snakemake was started in (SLURM jobs
# inherit it); environment.yml documents that environment for conda users.
ENVIRONMENT = "../../environment.yml"

# Where jobs go comes from the environment, so no tracked file names a site's partition or
# account: LITPIPE_SLURM_PARTITION, LITPIPE_SLURM_ACCOUNT, LITPIPE_SLURM_QOS, LITPIPE_GPU_MODEL,
# and LITPIPE_GPUS (GPUs for each search worker and the fit; 0, the default, on CPU clusters).
_PLACEMENT = {
    "slurm_partition": "LITPIPE_SLURM_PARTITION",
    "slurm_account": "LITPIPE_SLURM_ACCOUNT",
    "qos": "LITPIPE_SLURM_QOS",
    "gpu_model": "LITPIPE_GPU_MODEL",
}
PLACEMENT = {key: os.environ[name] for key, name in _PLACEMENT.items() if os.environ.get(name)}
GPUS = int(os.environ.get("LITPIPE_GPUS", "0"))

# Per-rule resources, declared once, for the first attempt. Runtimes (minutes) are generous multiples of the
# wall times measured on 2 CPU cores (results/timing/*.json: each stage took under a minute there); the report
# suggests a --time and --mem for each from what a run measured. A site sets its own in its profile
# (set-resources, see docs/cluster.md#resources), which replace these as Snakemake does.
RESOURCES = {
    "light": dict(runtime=15, mem_mb=2000, cpus_per_task=1),
    "train": dict(runtime=60, mem_mb=4000, cpus_per_task=2, gpu=GPUS),
    # A search worker takes one core: N one-thread workers side by side beat one N-thread worker on
    # small models (litpipe's own launcher splits the cores the same way).
    "worker": dict(runtime=60, mem_mb=4000, cpus_per_task=1, gpu=GPUS),
    "report": dict(runtime=15, mem_mb=4000, cpus_per_task=1),  # papermill, a kernel and nbconvert: about 2 GB
}
# The kind of resources each rule gets; a stage not named here (a new one) gets "light".
KIND = {"sanity": "train", "lr_find": "train", "fit": "train", "search_worker": "worker", "report": "report"}
# Data preparation and the search's setup run on the submit host: compute nodes often have no
# internet for downloads, and the setup only writes the study.
LOCAL = {"prepare", "search_setup"}
# SIGUSR1 two minutes before the time limit: fit saves models/resume.ckpt and stops at the end of the
# epoch; the retry (or a re-run) resumes from it.
SLURM_EXTRA = {"fit": "--signal=USR1@120"}


# A retry (the profile's `retries`) gets twice the time and memory of the attempt before it, so a job that ran
# out of either succeeds with more (a fit resumes where the last attempt stopped: SLURM_EXTRA).
GROWING = ("runtime", "mem_mb")


def growing(first):
    """A resource that doubles with each attempt: Snakemake passes the attempt (1 for the first) to a
    function given as a resource, and evaluates it again for each retry."""
    return lambda wildcards, attempt: first * 2 ** (attempt - 1)


def resources(rule_name):
    declared = RESOURCES[KIND.get(rule_name, "light")]
    grown = {name: growing(value) if name in GROWING else value for name, value in declared.items()}
    extra = {"slurm_extra": SLURM_EXTRA[rule_name]} if rule_name in SLURM_EXTRA else {}
    return {**grown, **PLACEMENT, **extra}


# A distributed fit (train.devices x train.num_nodes processes) is one SLURM job of that many tasks, train.devices
# on each of train.num_nodes nodes (and as many GPUs on each, when the fit trains on GPUs); its shell starts the
# tasks with srun, and Lightning's SLURM environment finds each one's rank. Outside SLURM (no SLURM_JOB_ID) the
# command runs as it is, and Lightning starts the processes itself.
TRAIN = PARAMS.train
WORLD = TRAIN.devices * TRAIN.num_nodes


def fit_resources():
    job = resources("fit")
    if WORLD == 1:
        return job
    # The SLURM plugin's "mpi" jobs: the shell itself starts the tasks (fit_shell).
    job.update(mpi="srun", nodes=TRAIN.num_nodes)
    if TRAIN.devices > 1:
        job["tasks_per_node"] = TRAIN.devices
    else:  # the plugin takes tasks per node above 1 only
        job["tasks"] = WORLD
    if job.pop("gpu", 0) or TRAIN.accelerator in ("gpu", "cuda"):
        model = job.pop("gpu_model", None)
        job["gres"] = f"gpu:{model}:{TRAIN.devices}" if model else f"gpu:{TRAIN.devices}"
    return job


def fit_shell():
    """The fit rules' shell (the command comes from params.command): under SLURM, with many processes, one per
    task through srun, whose task settings are given again (the job step's environment is cleared of the
    allocation's); the cores per task are the job's, a site's set-resources included."""
    if WORLD == 1:
        return "{params.command}"
    tasks = f"--ntasks={WORLD} --ntasks-per-node={TRAIN.devices} --cpus-per-task={{resources.cpus_per_task}}"
    return f"${{{{SLURM_JOB_ID:+srun {tasks}}}}} {{params.command}}"


def cores(rule_name):
    """The rule's `threads`: Snakemake sets OMP_NUM_THREADS to it, and litpipe runs that many threads."""
    return RESOURCES[KIND.get(rule_name, "light")]["cpus_per_task"]


def outputs(files):
    return [directory(path) if dag.is_directory(path) else path for path in files]


def per_seed(files):
    """dvc.yaml's replicate directories as Snakemake knows them: each further seed's entry in them, which its
    own job makes (fit.smk); empty with one seed."""
    found = []
    for path in files:
        if Path(path) in paths.REPLICATE_DIRS:
            found += [str(out) for run in REPLICATES.values() for out in run.outputs if out.parent == Path(path)]
        else:
            found.append(path)
    return found
