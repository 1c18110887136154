from egath.logs import setup_logging

setup_logging(snakemake.log[0])

from egath.metrics import write_metrics

write_metrics(
    snakemake.input.codes,
    snakemake.output.metrics,
    protocol=snakemake.params.protocol,
    threads=snakemake.threads,
)
