from egath.logs import setup_logging

setup_logging(snakemake.log[0])

import torch

from egath.devices import select_device
from egath.experiment import train_and_evaluate

torch.set_num_threads(snakemake.threads)
train_and_evaluate(
    snakemake.input.pairs,
    snakemake.input.features,
    snakemake.input.graph,
    method=snakemake.wildcards.method,
    bits=int(snakemake.wildcards.bits),
    seeds=snakemake.params.seeds,
    params=snakemake.params.training,
    spec=snakemake.params.spec,
    models=snakemake.output.models,
    codes=snakemake.output.codes,
    metrics=snakemake.output.metrics,
    protocol=snakemake.params.protocol,
    device=select_device(snakemake.params.device, gpu_slots=snakemake.params.gpu_slots),
    dataset=snakemake.wildcards.dataset,
    threads=snakemake.threads,
    tuning=snakemake.input.tuning or None,
    first_stage=snakemake.input.first_stage or None,
)
