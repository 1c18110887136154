rule tune:
    """The equal tuning budget of one cell: the method's own search space, scored on training
    pairs held out (egath.tuning); the best values go to the cell's training."""
    input:
        pairs=rules.build_pairs.output.pairs,
        features=get_features,
        graph=rules.build_graph.output.graph,
        first_stage=get_first_stage,
    output:
        tuning="results/{dataset}/{method}/{bits}/tuning.json",
    log:
        "logs/tune/{dataset}/{method}/{bits}.log",
    benchmark:
        "results/benchmarks/tune/{dataset}/{method}/{bits}.tsv"
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
        budget=get_tuning_budget,
        code=get_tuning_code,
        device=config["device"],
        gpu_slots=config["gpu_slots"],
    script:
        "../scripts/tune.py"
