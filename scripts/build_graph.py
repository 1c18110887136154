from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from egath.graph import build_graph, clip_label_embeddings, glove_label_embeddings, read_label_names

if snakemake.params.label_embeddings == "glove":
    node_features, source = glove_label_embeddings(
        snakemake.input.embeddings, read_label_names(snakemake.input.pairs)
    )
else:
    node_features, source = clip_label_embeddings(snakemake.input.embeddings)
graph = build_graph(
    snakemake.input.pairs,
    snakemake.output.graph,
    threshold=snakemake.params.threshold,
    node_features=node_features,
    node_features_source=source,
)
log.info("wrote %s: %d labels, %d edges (self-loops included) at threshold %g; node features: %s",
         snakemake.output.graph, len(graph.label_names), int(graph.adjacency.sum()),
         snakemake.params.threshold, source)
