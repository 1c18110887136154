rule train:
    input:
        pairs=rules.build_pairs.output.pairs,
        features=get_features,
        graph=rules.build_graph.output.graph,
        method_file=get_method_file,
    output:
        model="results/{dataset}/{method}/{bits}/model.pt",
    log:
        "logs/train/{dataset}/{method}/{bits}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{method}/{bits}.tsv"
    conda:
        "../envs/egath.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    params:
        training=get_train_params,
        spec=get_method_spec,
        device=config["device"],
    script:
        "../scripts/train.py"
