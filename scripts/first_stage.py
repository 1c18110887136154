from egath.logs import setup_logging

setup_logging(snakemake.log[0])

import torch

from egath.devices import select_device
from egath.first_stage import run_first_stage

torch.set_num_threads(snakemake.threads)
run_first_stage(
    snakemake.input.pairs,
    snakemake.input.features,
    snakemake.output.first_stage,
    method=snakemake.wildcards.method,
    bits=int(snakemake.wildcards.bits),
    spec=snakemake.params.spec,
    dataset=snakemake.wildcards.dataset,
    device=select_device(snakemake.params.device, gpu_slots=snakemake.params.gpu_slots),
)
