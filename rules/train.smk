rule train:
    """One cell of the grid: every seed of one method on one dataset at one code length, each
    trained, encoded and evaluated in one job (egath.experiment)."""
    input:
        pairs=rules.build_pairs.output.pairs,
        features=get_features,
        graph=rules.build_graph.output.graph,
        tuning=get_tuning,
        first_stage=get_first_stage,
    output:
        models=expand(
            "results/{{dataset}}/{{method}}/{{bits}}/seed{seed}/model.pt", seed=SEEDS
        ),
        codes=expand(
            "results/{{dataset}}/{{method}}/{{bits}}/seed{seed}/codes.h5", seed=SEEDS
        ),
        metrics=expand(
            "results/{{dataset}}/{{method}}/{{bits}}/seed{seed}/metrics.json",
            seed=SEEDS,
        ),
    log:
        "logs/train/{dataset}/{method}/{bits}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{method}/{bits}.tsv"
    conda:
        "../envs/egath.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=6000,
        runtime=120,
    params:
        training=get_train_params,
        spec=get_method_spec,
        seeds=SEEDS,
        protocol=get_protocol,
        code=get_training_code,
        device=config["device"],
        gpu_slots=config["gpu_slots"],
    script:
        "../scripts/train.py"
