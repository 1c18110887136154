rule fetch_clip_weights:
    output:
        done="resources/weights/{encoder}.txt",
    log:
        "logs/fetch_clip_weights/{encoder}.log",
    localrule: True
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        downloads=1,
        mem_mb=4000,
        runtime=60,
    params:
        model=config["clip"]["model"],
        pretrained=config["clip"]["pretrained"],
    script:
        "../scripts/fetch_clip_weights.py"


rule extract_features:
    input:
        pairs=rules.build_pairs.output.pairs,
        weights=get_clip_weights,
    output:
        features="results/{dataset}/features/{encoder}.h5",
    log:
        "logs/extract_features/{dataset}/{encoder}.log",
    conda:
        "../envs/egath.yaml"
    threads: max(1, config["clip"]["num_workers"])
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        model=config["clip"]["model"],
        pretrained=config["clip"]["pretrained"],
        batch_size=config["clip"]["batch_size"],
        num_workers=config["clip"]["num_workers"],
        max_image_pixels=config["clip"]["max_image_pixels"],
        unreadable_images=config["clip"]["unreadable_images"],
        device=config["device"],
        images=get_image_files_stamp,
    script:
        "../scripts/extract_features.py"
