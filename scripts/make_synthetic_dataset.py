from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from pathlib import Path

from egath.datasets.synthetic import make_synthetic_dataset

manifest = make_synthetic_dataset(Path(snakemake.output.manifest).parent, **snakemake.params.synthetic)
log.info("wrote %s, its labels and images (%s)", manifest, snakemake.params.synthetic)
