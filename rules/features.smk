rule extract_features:
    input:
        pairs=rules.build_pairs.output.pairs,
    output:
        features="results/{dataset}/features/{encoder}.h5",
    log:
        "logs/extract_features/{dataset}/{encoder}.log",
    params:
        model=config["clip"]["model"],
        pretrained=config["clip"]["pretrained"],
        batch_size=config["clip"]["batch_size"],
        num_workers=config["clip"]["num_workers"],
        device=config["device"],
    threads: max(1, config["clip"]["num_workers"])
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    conda:
        "../envs/egath.yaml"
    script:
        "../scripts/extract_features.py"
