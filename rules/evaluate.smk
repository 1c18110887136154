rule evaluate:
    input:
        model=rules.train.output.model,
        pairs=rules.build_pairs.output.pairs,
        features=get_features,
    output:
        codes="results/{dataset}/{method}/{bits}/codes.h5",
        metrics="results/{dataset}/{method}/{bits}/metrics.json",
    log:
        "logs/evaluate/{dataset}/{method}/{bits}.log",
    conda:
        "../envs/egath.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        protocol=get_protocol,
    script:
        "../scripts/evaluate.py"
