from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from egath.reporting import write_tuning_table
from egath.tuning import read_tuning

rows = write_tuning_table(
    [read_tuning(path) for path in snakemake.input.tunings],
    snakemake.output.csv,
    snakemake.output.md,
    snakemake.output.html,
    listed=snakemake.params.methods,
)
log.info("wrote %s, %s and %s (%d tuned cells)", snakemake.output.csv, snakemake.output.md,
         snakemake.output.html, len(rows))
