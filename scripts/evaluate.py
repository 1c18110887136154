from egath.logs import setup_logging

setup_logging(snakemake.log[0])

import torch

from egath.encoding import encode_dataset
from egath.metrics import write_metrics

torch.set_num_threads(snakemake.threads)
encode_dataset(
    snakemake.input.model,
    snakemake.input.pairs,
    snakemake.input.features,
    snakemake.output.codes,
    device="cpu",  # a forward pass of small heads: not worth holding a GPU for
)
write_metrics(
    snakemake.output.codes,
    snakemake.output.metrics,
    protocol=snakemake.params.protocol,
    threads=snakemake.threads,
)
