rule build_graph:
    input:
        pairs=rules.build_pairs.output.pairs,
        features=get_features,
    output:
        graph="results/{dataset}/graph.h5",
    log:
        "logs/build_graph/{dataset}.log",
    params:
        threshold=lambda wildcards: dataset_config(wildcards)["cooccurrence_threshold"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/egath.yaml"
    script:
        "../scripts/build_graph.py"
