from egath.logs import setup_logging

setup_logging(snakemake.log[0])

from egath.datasets import build_pairs

build_pairs(snakemake.input.manifest, snakemake.output.pairs, **snakemake.params)
