rule build_graph:
    input:
        pairs=rules.build_pairs.output.pairs,
        embeddings=get_label_embeddings,
    output:
        graph="results/{dataset}/graph.h5",
    log:
        "logs/build_graph/{dataset}.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        threshold=lambda wildcards: dataset_config(wildcards)["cooccurrence_threshold"],
        label_embeddings=config["label_embeddings"]["source"],
    script:
        "../scripts/build_graph.py"


rule download_glove:
    output:
        vectors="resources/glove/{file}",
    log:
        "logs/download_glove/{file}.log",
    localrule: True
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        downloads=1,
        mem_mb=1000,
        runtime=120,
    params:
        url=config["label_embeddings"]["glove_url"],
    script:
        "../scripts/download_glove.py"
