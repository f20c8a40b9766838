"""Retrieval: galleries encoded once (`encoder` runs read -> decode -> encode -> write,
`encodings` shares one pass between the index and the feature cache, `features`), indexes
(`indexing`, `build`; under torchrun `parts` with `sharded_index` and `sharded_features`;
`embeddings` from clip-retrieval), query methods (`methods`, released mappers in `releases`),
the one reference type (`references`) and the queries themselves (`query`, `batch`); each
command's request in `config`."""
