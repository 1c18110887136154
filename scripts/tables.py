from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from egath.reporting import collect_metrics, read_reference_table, write_map_table

rows = write_map_table(
    collect_metrics(snakemake.input.metrics),
    snakemake.output.csv,
    snakemake.output.md,
    snakemake.output.tex,
    reference=read_reference_table(*snakemake.input.reference),
    html_path=snakemake.output.html,
    listed=snakemake.params.methods,
)
log.info("wrote %s (%d rows), %s and %s from %d metrics files", snakemake.output.csv, len(rows),
         snakemake.output.md, snakemake.output.tex, len(snakemake.input.metrics))
