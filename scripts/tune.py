from egath.logs import setup_logging

setup_logging(snakemake.log[0])

import torch

from egath.devices import select_device
from egath.tuning import TuningBudget, tune

torch.set_num_threads(snakemake.threads)
tune(
    snakemake.input.pairs,
    snakemake.input.features,
    snakemake.input.graph,
    snakemake.output.tuning,
    method=snakemake.wildcards.method,
    bits=int(snakemake.wildcards.bits),
    params=snakemake.params.training,
    spec=snakemake.params.spec,
    budget=TuningBudget.from_dict(snakemake.params.budget),
    dataset=snakemake.wildcards.dataset,
    device=select_device(snakemake.params.device, gpu_slots=snakemake.params.gpu_slots),
    first_stage=snakemake.input.first_stage or None,
)
