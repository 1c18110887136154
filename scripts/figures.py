from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from egath.reporting import collect_metrics, plot_pr_curves, plot_precision_at_n

metrics = collect_metrics(snakemake.input.metrics)
dataset, bits = snakemake.wildcards.dataset, int(snakemake.wildcards.bits)
listed = snakemake.params.methods
plot_pr_curves(metrics, dataset, bits, snakemake.output.pr_png, snakemake.output.pr_pdf, listed)
plot_precision_at_n(metrics, dataset, bits, snakemake.output.topn_png, snakemake.output.topn_pdf, listed)
log.info("wrote %s and %s (.png, .pdf) from %d metrics files", snakemake.output.pr_png,
         snakemake.output.topn_png, len(snakemake.input.metrics))
