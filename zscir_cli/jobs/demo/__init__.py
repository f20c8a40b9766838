"""`zscir demo`: the whole offline path on the shapes world, from nothing to a results table
(`run.run_demo`), built on every other job."""
