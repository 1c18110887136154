rule first_stage:
    """The first step of a method that trains in two (egath.methods.FIRST_STAGES; TwDH: its hash
    centres and the long-to-short transform, fitted on the training labels), for one dataset and
    code length; its output is an input of that method's training and tuning only."""
    input:
        pairs=rules.build_pairs.output.pairs,
        features=get_features,
    output:
        first_stage="results/{dataset}/{method}/{bits}/first_stage.pt",
    log:
        "logs/first_stage/{dataset}/{method}/{bits}.log",
    benchmark:
        "results/benchmarks/first_stage/{dataset}/{method}/{bits}.tsv"
    wildcard_constraints:
        method="|".join(re.escape(m) for m in TWO_STEP_METHODS),
    conda:
        "../envs/egath.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    params:
        spec=get_first_stage_spec,
        device=config["device"],
        gpu_slots=config["gpu_slots"],
    script:
        "../scripts/first_stage.py"
