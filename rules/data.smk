rule make_synthetic_dataset:
    output:
        manifest="resources/{dataset}/synthetic/manifest.tsv",
        labels="resources/{dataset}/synthetic/labels.txt",
        images=directory("resources/{dataset}/synthetic/images"),
    log:
        "logs/make_synthetic_dataset/{dataset}.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        synthetic=lambda wildcards: dataset_config(wildcards)["synthetic"],
    script:
        "../scripts/make_synthetic_dataset.py"


rule download_dataset:
    output:
        done="resources/{dataset}/raw/download.done",
    log:
        "logs/download_dataset/{dataset}.log",
    localrule: True
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        downloads=1,
        mem_mb=1000,
        runtime=600,
    params:
        source=lambda wildcards: dataset_config(wildcards)["source"],
        protocol=lambda wildcards: dataset_config(wildcards)["protocol"],
    script:
        "../scripts/download_dataset.py"


rule prepare_dataset:
    input:
        done=rules.download_dataset.output.done,
    output:
        manifest="resources/{dataset}/prepared/manifest.tsv",
        labels="resources/{dataset}/prepared/labels.txt",
    log:
        "logs/prepare_dataset/{dataset}.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        source=lambda wildcards: dataset_config(wildcards)["source"],
        protocol=lambda wildcards: dataset_config(wildcards)["protocol"],
        allow_missing_images=lambda wildcards: dataset_config(wildcards)[
            "allow_missing_images"
        ],
    script:
        "../scripts/prepare_dataset.py"


rule build_pairs:
    input:
        manifest=get_manifest,
    output:
        pairs="results/{dataset}/pairs.h5",
    log:
        "logs/build_pairs/{dataset}.log",
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        dataset=lambda wildcards: wildcards.dataset,
        bow_dim=lambda wildcards: dataset_config(wildcards)["bow_dim"],
        n_query=lambda wildcards: dataset_config(wildcards)["n_query"],
        n_train=lambda wildcards: dataset_config(wildcards)["n_train"],
        split_seed=lambda wildcards: dataset_config(wildcards)["split_seed"],
        # the preparers keep empty texts and images listed twice where their protocol does
        # (NUS-WIDE's image list names six photos twice); a user's manifest opts in
        allow_empty_text=lambda wildcards: (
            dataset_config(wildcards)["source"] != "manifest"
            or dataset_config(wildcards)["allow_empty_text"]
        ),
        allow_duplicate_images=lambda wildcards: (
            dataset_config(wildcards)["source"] != "manifest"
            or dataset_config(wildcards)["allow_duplicate_images"]
        ),
    script:
        "../scripts/build_pairs.py"
