from egath.logs import setup_logging

setup_logging(snakemake.log[0])

from pathlib import Path

from egath.datasets.synthetic import make_synthetic_dataset

make_synthetic_dataset(Path(snakemake.output.manifest).parent, **snakemake.params.synthetic)
