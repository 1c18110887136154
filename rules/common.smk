import os
import re
import sys

import h5py
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the egath package beside the Snakefile
from egath.io import files_digest
from egath.logs import quiet_library_warnings
from egath.methods import FIRST_STAGES, check_model, load_method, method_source
from egath.naming import encoder_slug
from egath.settings import job_training, method_spec
from egath.sources import code_sha256

validate(config, schema="../schemas/config.schema.yaml")


def method_model(method):
    """The model a method runs: its `model`, or the method's own name."""
    return (config["methods"][method] or {}).get("model", method)


def check_params(method):
    """A method's `params` against its params dataclass. Only where it sets some, and only in
    the run a user starts (not again in each cluster job's): the check imports the method's
    module, and with it torch (once per model)."""
    params = (config["methods"][method] or {}).get("params")
    if params and workflow.is_main_process:
        quiet_library_warnings()
        load_method(method_model(method)).make_params(params)


# A digest of the code each job runs (egath.sources): the method's module and the egath
# modules it and the job's entry point import. A param of the train and tune rules, so an
# edited method, or an upgraded package, reruns their jobs; Snakemake itself sees only a rule's
# script change. Comments, formatting and docstrings do not count. A method that cannot run
# stops the run here, before any job.
CODE = {}  # (method, entry point) -> digest
for _method in config["methods"]:
    try:
        check_model(method_model(_method))
        for _entry in ("egath.experiment", "egath.tuning"):
            CODE[_method, _entry] = code_sha256(
                [method_source(method_model(_method)), _entry]
            )
    except ValueError as e:
        raise ValueError(f"config key methods.{_method}.model: {e}") from None
    try:
        check_params(_method)
    except ValueError as e:
        raise ValueError(f"config key methods.{_method}.params: {e}") from None


DATASETS = list(config["datasets"])
BITS = config["bits"]
METHODS = list(config["methods"])
SEEDS = config["seeds"]
EXAMPLE_METHODS = config["report"].get("retrieval_examples", METHODS)


def method_bits(method):
    """The code lengths a method runs at: its own `bits`, else the config's."""
    return (config["methods"][method] or {}).get("bits", BITS)


for _method in METHODS:
    _extra = sorted(set(method_bits(_method)) - set(BITS))
    if _extra:
        raise ValueError(
            f"config key methods.{_method}.bits: {_extra} not in bits {BITS}"
        )
for _method in EXAMPLE_METHODS:
    if _method not in METHODS:
        raise ValueError(
            f"config key report.retrieval_examples: {_method!r} is not in methods {METHODS}"
        )


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    method="|".join(re.escape(m) for m in METHODS),
    bits=r"\d+",
    encoder=r"[^/]+",


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def encoder_name():
    """The {encoder} path component: model name and weights, e.g. ViT-B-32_openai."""
    return encoder_slug(config["clip"]["model"], config["clip"]["pretrained"])


def get_clip_weights(wildcards):
    """Named weights (e.g. openai) are fetched once by a local rule, so compute nodes without
    internet find them in the cache; random weights and local checkpoints need nothing.
    """
    pretrained = config["clip"]["pretrained"]
    if pretrained.lower() == "none" or os.path.exists(pretrained):
        return []
    return f"resources/weights/{encoder_name()}.txt"


def get_features(wildcards):
    return f"results/{wildcards.dataset}/features/{encoder_name()}.h5"


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


def get_label_embeddings(wildcards):
    """The GAT's node features come from GloVe vectors or from the cached CLIP features."""
    if config["label_embeddings"]["source"] == "glove":
        return f"resources/glove/{config['label_embeddings']['glove_file']}"
    return get_features(wildcards)


def get_manifest(wildcards):
    source = dataset_config(wildcards)["source"]
    if source == "synthetic":
        return rules.make_synthetic_dataset.output.manifest
    if source == "manifest":
        return dataset_config(wildcards)["manifest"]
    return rules.prepare_dataset.output.manifest


def get_train_params(wildcards):
    """This job's training parameters: `training`, then each matching `train_overrides` entry.

    Only this job's slice of the config reaches it, so an edit reruns only the jobs it concerns.
    """
    return job_training(
        config, wildcards.dataset, wildcards.method, int(wildcards.bits)
    )


def get_training_code(wildcards):
    return CODE[wildcards.method, "egath.experiment"]


def get_tuning_code(wildcards):
    return CODE[wildcards.method, "egath.tuning"]


def get_method_spec(wildcards):
    """Model, text input, params and inputs of a method; an empty entry means model = the
    method's name."""
    return method_spec(config, wildcards.method)


def is_tuned(method):
    """A method is tuned where its entry says so, else where `tuning.enabled` does."""
    return (config["methods"][method] or {}).get("tune", config["tuning"]["enabled"])


def get_tuning(wildcards):
    """The cell's tuning.json where the method is tuned: its training applies the best values."""
    if not is_tuned(wildcards.method):
        return []
    return (
        f"results/{wildcards.dataset}/{wildcards.method}/{wildcards.bits}/tuning.json"
    )


# the methods of this config that train in two steps: only these have a first stage
TWO_STEP_METHODS = [m for m in METHODS if method_model(m) in FIRST_STAGES]


def get_first_stage(wildcards):
    """The output of the method's first stage where it trains in two steps (FIRST_STAGES): an
    input of its training and tuning."""
    if method_model(wildcards.method) not in FIRST_STAGES:
        return []
    return f"results/{wildcards.dataset}/{wildcards.method}/{wildcards.bits}/first_stage.pt"


def get_first_stage_spec(wildcards):
    """What the first stage depends on of the method's entry: its model, its text input and the
    first step's own settings (`params.<key>`, FIRST_STAGES); a change of the second step's
    settings does not rerun it."""
    model = method_model(wildcards.method)
    spec = get_method_spec(wildcards)
    key = FIRST_STAGES[model].settings
    return {
        "model": model,
        "text": spec.get("text", "bow"),
        "params": {key: spec.get("params", {}).get(key, {})},
    }


def get_tuning_budget(wildcards):
    """The budget, the same for every method: changing it reruns every tuning job."""
    return {key: value for key, value in config["tuning"].items() if key != "enabled"}


def get_protocol(wildcards):
    """What metrics.json records of the protocol beyond what codes.h5 and the training know
    (set sizes, epoch selection, training seed, thread count, code update)."""
    return {
        "split_seed": dataset_config(wildcards)["split_seed"],
        "relevance": "shares at least one label",
        "map": "mAP@all",
        "tie_rule": "random order (expected over the orders of tied items)",
    }


def get_runs(name, dataset=DATASETS, bits=BITS):
    """`name` (metrics.json, model.pt) of every seed of every method at each of `bits` it runs
    at, on each of `dataset` (default: the whole grid)."""
    return [
        f"results/{d}/{method}/{b}/seed{seed}/{name}"
        for d in dataset
        for method in METHODS
        for b in bits
        if b in method_bits(method)
        for seed in SEEDS
    ]


def get_example_codes(wildcards):
    """The retrieval examples show the codes of the first training seed."""
    return f"results/{wildcards.dataset}/{wildcards.method}/{wildcards.bits}/seed{SEEDS[0]}/codes.h5"


def get_reference_table():
    """Published numbers to show beside the measured ones, if configured (a relative path is
    relative to the workflow's folder, where the shipped tables live)."""
    path = config["report"]["reference_table"]
    return [os.path.join(workflow.basedir, path)] if path else []


def get_tunings():
    """tuning.json of every tuned cell."""
    return [
        f"results/{dataset}/{method}/{bits}/tuning.json"
        for dataset in DATASETS
        for method in METHODS
        for bits in method_bits(method)
        if is_tuned(method)
    ]


def get_final_output():
    """Every result a user reads, so that Snakemake makes a deleted one again: it reruns a
    job for a missing output only where a file it is asked for needs it."""
    tuned = any(is_tuned(method) for method in METHODS)
    return [
        *[
            path
            for result in ("model.pt", "codes.h5", "metrics.json")
            for path in get_runs(result)
        ],
        *get_tunings(),
        *expand(
            "results/tables/tuning.{ext}", ext=["csv", "md", "html"] if tuned else []
        ),
        *expand("results/tables/map.{ext}", ext=["csv", "md", "tex", "html"]),
        *expand(
            "results/figures/{kind}_{dataset}_{bits}.{ext}",
            kind=["pr", "topn", "loss"],
            dataset=DATASETS,
            bits=BITS,
            ext=["png", "pdf"],
        ),
        *[
            f"results/figures/examples_{dataset}_{method}_{bits}.{ext}"
            for dataset in DATASETS
            for method in EXAMPLE_METHODS
            for bits in method_bits(method)
            for ext in ("png", "pdf")
        ],
    ]
