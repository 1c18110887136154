rule tables:
    input:
        metrics=get_runs("metrics.json"),
        reference=get_reference_table(),
    output:
        csv=report(
            "results/tables/map.csv",
            caption="../report/map_table.rst",
            category="Tables",
        ),
        md="results/tables/map.md",
        tex="results/tables/map.tex",
        html=report(
            "results/tables/map.html",
            caption="../report/map_table.rst",
            category="Tables",
        ),
    log:
        "logs/tables.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        methods=METHODS,  # the config's order, within the tables' method groups
    script:
        "../scripts/tables.py"


rule tuning_table:
    input:
        tunings=get_tunings(),
    output:
        csv="results/tables/tuning.csv",
        md="results/tables/tuning.md",
        html=report(
            "results/tables/tuning.html",
            caption="../report/tuning_table.rst",
            category="Tables",
        ),
    log:
        "logs/tuning_table.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        methods=METHODS,
    script:
        "../scripts/tuning_table.py"


rule figures:
    input:
        metrics=lambda wildcards: get_runs(
            "metrics.json", [wildcards.dataset], [int(wildcards.bits)]
        ),
    output:
        pr_png=report(
            "results/figures/pr_{dataset}_{bits}.png",
            caption="../report/pr_curve.rst",
            category="Precision-recall",
            labels={"dataset": "{dataset}", "bits": "{bits}"},
        ),
        pr_pdf="results/figures/pr_{dataset}_{bits}.pdf",
        topn_png=report(
            "results/figures/topn_{dataset}_{bits}.png",
            caption="../report/precision_at_n.rst",
            category="Precision at N",
            labels={"dataset": "{dataset}", "bits": "{bits}"},
        ),
        topn_pdf="results/figures/topn_{dataset}_{bits}.pdf",
    log:
        "logs/figures/{dataset}_{bits}.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        methods=METHODS,  # the config's order, within the tables' method groups
    script:
        "../scripts/figures.py"


rule loss_curves:
    input:
        models=lambda wildcards: get_runs(
            "model.pt", [wildcards.dataset], [int(wildcards.bits)]
        ),
    output:
        png=report(
            "results/figures/loss_{dataset}_{bits}.png",
            caption="../report/loss_curves.rst",
            category="Training",
            labels={"dataset": "{dataset}", "bits": "{bits}"},
        ),
        pdf="results/figures/loss_{dataset}_{bits}.pdf",
    log:
        "logs/loss_curves/{dataset}_{bits}.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        methods=METHODS,  # the config's order, within the tables' method groups
    script:
        "../scripts/loss_curves.py"


rule retrieval_examples:
    input:
        codes=get_example_codes,
        pairs=rules.build_pairs.output.pairs,
    output:
        png=report(
            "results/figures/examples_{dataset}_{method}_{bits}.png",
            caption="../report/retrieval_examples.rst",
            category="Retrieval examples",
            labels={"dataset": "{dataset}", "method": "{method}", "bits": "{bits}"},
        ),
        pdf="results/figures/examples_{dataset}_{method}_{bits}.pdf",
    log:
        "logs/retrieval_examples/{dataset}_{method}_{bits}.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        text_queries=3,
        image_queries=3,
        seed=0,
        training_seed=SEEDS[0],
    script:
        "../scripts/retrieval_examples.py"
