from egath.logs import setup_logging

setup_logging(snakemake.log[0])

from pathlib import Path

from egath.datasets import PREPARERS

PREPARERS[snakemake.params.source](
    Path(snakemake.input.done).parent,
    Path(snakemake.output.manifest).parent,
    protocol=snakemake.params.protocol,
    allow_missing_images=snakemake.params.allow_missing_images,
)
