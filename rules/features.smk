import h5py

from egath.io import files_digest


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


def get_image_files_stamp(wildcards):
    """A digest of the path, size and modification time of every image pairs.h5 lists: a
    replaced or edited image changes it, and the changed param reruns the extraction.

    One stat per image whenever the workflow starts (2-4 s for 300,000 images); the images
    as inputs of the rule would cost Snakemake about 30 s per 100,000 files. Before pairs.h5
    exists it is empty: Snakemake evaluates params again just before the job runs.
    """
    pairs = expand(rules.build_pairs.output.pairs, dataset=wildcards.dataset)[0]
    try:
        with h5py.File(pairs, "r") as f:
            paths = f["image_paths"].asstr()[()]
    except (OSError, KeyError):  # not built yet, or unreadable: the job will say so
        return ""
    return files_digest(paths)


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
        mem_mb=16000,
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
