# EGATH: end-to-end graph attention network hashing for cross-modal retrieval.
#
# resources/{dataset}/...                          raw data and the dataset manifest
# results/{dataset}/pairs.h5                       ids, images, texts, labels, bag-of-words, splits
# results/{dataset}/features/{encoder}.h5          cached CLIP features
# results/{dataset}/graph.h5                       label co-occurrence graph and node features
# results/{dataset}/{method}/{bits}/first_stage.pt a two-step method's first step (TwDH's transform)
# results/{dataset}/{method}/{bits}/tuning.json    the cell's tuning search (where tuning is on)
# results/{dataset}/{method}/{bits}/seed{seed}/model.pt       one trained model per seed
# results/{dataset}/{method}/{bits}/seed{seed}/codes.h5       query and database hash codes
# results/{dataset}/{method}/{bits}/seed{seed}/metrics.json   mAP, precision-recall, precision@N
# results/tables/map.{csv,md,tex,html}             all runs in one table, mean ± std over seeds
# results/tables/tuning.{csv,md,html}              what each tuned cell chose
# results/figures/{pr,topn,loss}_{dataset}_{bits}.{png,pdf}
# results/figures/examples_{dataset}_{method}_{bits}.{png,pdf}   retrieval examples

from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/graph.smk"
include: "rules/first_stage.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
