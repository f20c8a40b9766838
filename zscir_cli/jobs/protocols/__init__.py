"""The evaluation protocols: suites (a split of the shapes world or a public benchmark, `suites`,
`trees`), the one ranking path (`ranking`), metrics and breakdowns (`results`), the test
servers' prediction files (`predictions`, `submit`), the worst-queries page (`worst`); `eval`,
`submit` and `score` requests in `config`, `eval`'s entry point in `evaluate`."""
