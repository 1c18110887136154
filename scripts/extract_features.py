from egath.logs import setup_logging

setup_logging(snakemake.log[0])

import torch

from egath.devices import select_device
from egath.features import extract_features

torch.set_num_threads(snakemake.threads)
params = dict(snakemake.params)
params.pop("images")  # the image files' digest: changes rerun this job, extraction reads them itself
extract_features(
    snakemake.input.pairs,
    snakemake.output.features,
    model_name=params.pop("model"),
    device=select_device(params.pop("device")),
    **params,
)
