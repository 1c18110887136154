from egath.logs import setup_logging

setup_logging(snakemake.log[0])

import torch

from egath.devices import select_device
from egath.training import train

torch.set_num_threads(snakemake.threads)
train(
    snakemake.input.pairs,
    snakemake.input.features,
    snakemake.input.graph,
    snakemake.output.model,
    method=snakemake.wildcards.method,
    bits=int(snakemake.wildcards.bits),
    params=snakemake.params.training,
    spec=snakemake.params.spec,
    device=select_device(snakemake.params.device),
    dataset=snakemake.wildcards.dataset,
)
