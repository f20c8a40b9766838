"""The middle layer: what each command does, by job. Commands (`cli`) parse and call one entry
point here; jobs use the layers below (`model`, `data`, `index`, `eval`, `core`) and never the
commands.

- `training`: the one training loop, pretrain, Stage I, Stage II, synthetic triplets and their data;
- `retrieval`: encoding galleries, indexes (sharded or not), embeddings made elsewhere, query
  methods, references and queries;
- `protocols`: evaluation suites, the public benchmarks' trees, ranking, metrics, prediction files;
- `datasets`: preparing and finding data sets (the shapes world, folders, shards, CSV);
- `service`: what `zscir serve` loads and how its process is threaded;
- `demo`: the whole offline path on the shapes world.

Beside them, what several jobs share: `context` (store, progress, device), `backbones` (models
by name, including trained ones), `runs` (trained runs found and loaded), `distributed`
(torchrun plumbing), `pages` (self-contained HTML) and `cache` (`zscir cache ls|rm`).
"""
