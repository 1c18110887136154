from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from pathlib import Path

from egath.datasets.download import fetch_dataset, source_key
from egath.io import atomic_output

raw_dir = Path(snakemake.output.done).parent
files = fetch_dataset(source_key(snakemake.params.source, snakemake.params.protocol), raw_dir)
with atomic_output(snakemake.output.done) as tmp:
    tmp.write_text("".join(f"{path.name}\t{path.stat().st_size}\n" for path in files))
log.info("%d raw files of %s are in %s", len(files), snakemake.params.source, raw_dir)
