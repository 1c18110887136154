from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from egath.reporting import plot_loss_curves, read_history

plot_loss_curves(
    [read_history(path) for path in snakemake.input.models],
    snakemake.wildcards.dataset,
    int(snakemake.wildcards.bits),
    snakemake.output.png,
    snakemake.output.pdf,
    listed=snakemake.params.methods,
)
log.info("wrote %s and %s from %d models", snakemake.output.png, snakemake.output.pdf,
         len(snakemake.input.models))
