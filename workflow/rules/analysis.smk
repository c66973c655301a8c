# What a reviewer reads: residual and activation analysis, then the report.


rule analyze:
    input:
        "data/prepared",
        "models/best.ckpt",
        "results/fit/activations.csv",
    output:
        directory("results/analysis"),
        "results/timing/analyze.json",
    log:
        "logs/analyze.log",
    params:
        mistakes_shown=PARAMS.report.mistakes_shown,
    threads: cores("light")
    resources:
        **resources("light"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe analyze"


rule report:
    input:
        "workflow/notebooks/report.ipynb",
        "workflow/notebooks/offline/index.html.j2",
        "data/prepared",
        "results/sanity",
        "results/lr_find",
        rules.search.output,
        rules.fit.output,
        "results/test/metrics.json",
        "results/analysis",
        expand("results/timing/{stage}.json", stage=["prepare", "sanity", "lr_find", "search", "fit", "test", "analyze"]),
    output:
        "reports/report.html",
        directory("results/report"),
        "results/timing/report.json",
    log:
        "logs/report.log",
    params:
        title=PARAMS.report.title,
    threads: cores("report")
    resources:
        **resources("report"),
    conda:
        ENVIRONMENT
    shell:
        "litpipe report"
